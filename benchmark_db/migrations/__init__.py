"""Alembic migrations; `benchmark_db.migrate.upgrade(engine)` applies them."""
