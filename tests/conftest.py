"""Shared fixtures: real stores (SQLite file, PostgreSQL via pgserver) and a real server."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# One OpenMP/BLAS thread per process, for this process (set before torch or numpy is imported:
# pytest loads this file first) and every process the tests start (servers, their refit
# children, CLI commands, the docs' examples, torchrun's ranks), which inherit it. The tests'
# models are tiny, and the cores are often shared (a server's refit next to a training example,
# or any other process on the machine): with a pool of one thread per core, a parallel region
# then waits at its barrier for a thread whose core another process holds, and a pass of
# milliseconds takes up to a hundred times longer. With one core busy elsewhere,
# test_pfn_predictor.py + test_pfn_model.py took 280 s (its 0.5 s forward-pass bound failing at
# 0.88 s) instead of 20 s, and the guide's Trainer example trained 40 steps in 15 s instead of
# 0.3 s. On an idle machine the difference is a few seconds either way. Results differ at most
# in float rounding, which no assertion depends on; an explicit setting is kept.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def unsent_reports_in_the_test_directory(tmp_path, monkeypatch):
    """A report the integrations cannot send is saved to $HPARAMREC_UNSENT_DIR: never the
    user's ~/.cache in a test."""
    monkeypatch.setenv("HPARAMREC_UNSENT_DIR", str(tmp_path / "unsent"))


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL for the session, started from pip's pgserver (no root, no mocks)."""
    pgserver = pytest.importorskip("pgserver")
    root = Path(tempfile.mkdtemp(prefix="hparamrec-pg-"))
    server = pgserver.get_server(root, cleanup_mode="stop")
    _without_fsync(server.get_uri())
    yield server.get_uri()
    server.cleanup()
    shutil.rmtree(root, ignore_errors=True)


def _without_fsync(url: str) -> None:
    """A throw-away test cluster need not survive power loss: without fsync, stopping it after
    the many databases the suites create takes ~1 s instead of ~40 s (the shutdown checkpoint).
    Behaviour seen by clients (transactions, locks, constraints) is unchanged."""
    import sqlalchemy as sa

    engine = sa.create_engine(sa.make_url(url).set(drivername="postgresql+psycopg"),
                              isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text("ALTER SYSTEM SET fsync = off"))
        conn.execute(sa.text("SELECT pg_reload_conf()"))
    engine.dispose()


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
