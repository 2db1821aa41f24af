"""Create the runs table.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(100), nullable=False),
        sa.Column("run_id", sa.String(200), nullable=False),
        sa.Column("n_params", sa.Float, nullable=False),
        sa.Column("n_active_params", sa.Float, nullable=False),
        sa.Column("n_tokens", sa.Float, nullable=False),
        sa.Column("seq_len", sa.Integer, nullable=False),
        sa.Column("architecture", sa.String(16), nullable=False),
        sa.Column("optimizer", sa.String(16), nullable=False),
        sa.Column("weight_bits", sa.Integer, nullable=False),
        sa.Column("lr", sa.Float, nullable=False),
        sa.Column("batch_size_tokens", sa.Float, nullable=False),
        sa.Column("weight_decay", sa.Float, nullable=False),
        sa.Column("qat_fraction", sa.Float, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("final_loss", sa.Float, nullable=True),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("recommendation_id", sa.String(200), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("tenant", "run_id", name="uq_runs_tenant_run_id"),
    )
    op.create_index("ix_runs_tenant_sizes", "runs",
                    ["tenant", "n_params", "n_active_params", "n_tokens"])


def downgrade() -> None:
    op.drop_index("ix_runs_tenant_sizes", table_name="runs")
    op.drop_table("runs")
