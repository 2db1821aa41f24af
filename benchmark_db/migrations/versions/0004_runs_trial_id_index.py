"""An index on the runs' trial ids: a study finds the stored runs reported against its running
trials, whatever their spec (predictor/study_sync.py), on every read.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_runs_tenant_trial_id", "runs", ["tenant", "trial_id"])


def downgrade() -> None:
    op.drop_index("ix_runs_tenant_trial_id", table_name="runs")
