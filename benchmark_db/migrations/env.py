"""Alembic environment: always run programmatically on a connection we pass in."""

from alembic import context

from benchmark_db.schema import metadata

# Our own version table: Optuna's RDB storage, which shares this database for the refinement
# studies, keeps its schema revision in Alembic's default `alembic_version`.
VERSION_TABLE = "hparamrec_alembic_version"

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True,
                  version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
