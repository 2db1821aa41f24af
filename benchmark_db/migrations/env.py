"""Alembic environment: always run programmatically on a connection we pass in."""

from alembic import context

from benchmark_db.migrate import VERSION_TABLE  # ours, not Optuna's alembic_version
from benchmark_db.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True,
                  version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
