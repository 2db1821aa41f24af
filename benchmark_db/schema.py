"""Table definitions. The migrations in migrations/versions create exactly these (a test
compares them), so this is the one place to read the schema."""

import sqlalchemy as sa

metadata = sa.MetaData()

runs = sa.Table(
    "runs",
    metadata,
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
    sa.Column("trial_id", sa.String(200), nullable=False, server_default=""),
    sa.UniqueConstraint("tenant", "run_id", name="uq_runs_tenant_run_id"),
    sa.Index("ix_runs_tenant_sizes", "tenant", "n_params", "n_active_params", "n_tokens"),
    # A study's sync finds the runs reported against its running trials (predictor/study_sync.py).
    sa.Index("ix_runs_tenant_trial_id", "tenant", "trial_id"),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    # Public part of the key, shown in listings and used to find the row.
    sa.Column("key_id", sa.String(32), nullable=False, unique=True),
    # SHA-256 of the whole key: keys are 256-bit random, so a slow hash adds nothing.
    sa.Column("key_hash", sa.String(64), nullable=False),
    sa.Column("tenant", sa.String(100), nullable=False),
    sa.Column("label", sa.String(200), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
)

# The exploit recommendation first given for a run (RecommendRequest.run_id), by its spec and
# pins: a job resumed under the run_id is given it again, though the models moved on since.
run_recommendations = sa.Table(
    "run_recommendations",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(100), nullable=False),
    sa.Column("run_id", sa.String(200), nullable=False),
    # SHA-256 of the resolved spec and the pins, in canonical JSON.
    sa.Column("request_key", sa.String(64), nullable=False),
    sa.Column("recommendation", sa.JSON, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("tenant", "run_id", "request_key", name="uq_run_recommendations"),
)

# Each tenant's last fitted predictor of each kind, pickled, with what it was fitted on: a server
# that restarts, or another replica, loads it instead of fitting the same runs again.
fitted_models = sa.Table(
    "fitted_models",
    metadata,
    sa.Column("tenant", sa.String(100), primary_key=True),
    sa.Column("kind", sa.String(32), primary_key=True),
    # SHA-256 of the code that fitted it (predictor/): another release's model is not loaded.
    sa.Column("code", sa.String(64), nullable=False),
    sa.Column("runs", sa.Integer, nullable=False),  # the tenant's stored runs it was fitted on
    sa.Column("version", sa.String(200), nullable=False),
    sa.Column("model", sa.LargeBinary, nullable=False),
    sa.Column("fitted_at", sa.DateTime(timezone=True), nullable=False),
)
