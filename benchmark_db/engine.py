"""Engines from a SQLAlchemy URL: SQLite (embedded default) or PostgreSQL."""

from pathlib import Path

import sqlalchemy as sa

# How long a write waits for another connection's lock on a SQLite file before failing (the
# service then answers UNAVAILABLE, which clients retry). Below the client's 10 s deadline, so
# a locked file gives an answer the client can act on, not a timed-out call whose run may or
# may not be stored; our own writes hold the lock for milliseconds.
SQLITE_BUSY_SECONDS = 5.0


def create_engine(url: str) -> sa.Engine:
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed)
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in ("", "psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3 is what we install
    return sa.create_engine(parsed, pool_pre_ping=True, pool_size=10, max_overflow=20)


def _sqlite_engine(url: sa.URL) -> sa.Engine:
    if not url.database or url.database == ":memory:":
        raise ValueError("an in-memory SQLite database would lose every run: give a file path")
    Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"check_same_thread": False,
                                                "timeout": SQLITE_BUSY_SECONDS})

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        # WAL lets readers proceed during a write; FULL syncs each commit so an acked run
        # survives a crash of the process or the machine.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_SECONDS * 1000)}")
        cursor.close()

    return engine
