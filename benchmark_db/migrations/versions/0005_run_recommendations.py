"""The exploit recommendation first given for a run, so a resumed job is given it again.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "run_recommendations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(100), nullable=False),
        sa.Column("run_id", sa.String(200), nullable=False),
        sa.Column("request_key", sa.String(64), nullable=False),
        sa.Column("recommendation", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("tenant", "run_id", "request_key", name="uq_run_recommendations"),
    )


def downgrade() -> None:
    op.drop_table("run_recommendations")
