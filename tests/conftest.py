"""Shared fixtures: real stores (SQLite file, PostgreSQL via pgserver) and a real server."""

import shutil
import tempfile
from pathlib import Path

import pytest



@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL for the session, started from pip's pgserver (no root, no mocks)."""
    pgserver = pytest.importorskip("pgserver")
    root = Path(tempfile.mkdtemp(prefix="hparamrec-pg-"))
    server = pgserver.get_server(root, cleanup_mode="stop")
    yield server.get_uri()
    server.cleanup()
    shutil.rmtree(root, ignore_errors=True)


_pg_counter = iter(range(10**6))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """A fresh, empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'runs.db'}"
    import sqlalchemy as sa

    base = request.getfixturevalue("postgres_url")
    name = f"t{next(_pg_counter)}"
    engine = sa.create_engine(sa.make_url(base).set(drivername="postgresql+psycopg"),
                              isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return sa.make_url(base).set(database=name).render_as_string(hide_password=False)
