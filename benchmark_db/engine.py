"""Engines from a SQLAlchemy URL: SQLite (embedded default) or PostgreSQL."""

import hashlib
import os
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from benchmark_db.errors import DatabaseFileGone, DatabaseReadOnly

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
    return sa.create_engine(parsed, pool_pre_ping=True, pool_size=10, max_overflow=20,
                            connect_args=postgresql_connect_args(parsed))


@contextmanager
def advisory_lock(engine: sa.Engine | None, name: str) -> Iterator[None]:
    """On PostgreSQL, holds the advisory lock `name` for the block, so replicas sharing the
    database take turns (released with the transaction, also when a replica dies); elsewhere
    nothing (a SQLite file serves one server)."""
    if engine is None or engine.dialect.name != "postgresql":
        yield
        return
    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
        yield


def postgresql_connect_args(url: sa.URL) -> dict:
    """Names this process's connections in pg_stat_activity (which replica holds which), unless
    the URL names them itself."""
    if "application_name" in url.query:
        return {}
    return {"application_name": f"hparamrec pid {os.getpid()}"}


def sqlite_file(url: str | sa.URL) -> Path | None:
    """The file a SQLite URL names: absolute, ~ expanded, symlinks resolved (the lock beside
    it must be one for every name of the file); None for another database or an in-memory
    one."""
    url = sa.make_url(url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database).expanduser().resolve()


def canonical_url(url: str | sa.URL) -> sa.URL:
    """The URL, a SQLite one naming sqlite_file's path: what every engine on it connects to
    (SQLite itself expands no ~: sqlite:///~/x.db was a directory named ~ to it)."""
    url = sa.make_url(url)
    path = sqlite_file(url)
    return url if path is None else url.set(database=str(path))


# The first 16 bytes of every SQLite database file. An empty file is a new database to SQLite.
SQLITE_HEADER = b"SQLite format 3\x00"


class NotSqlite(ValueError):
    """The SQLite URL names a file that is not an SQLite database (an image, a CSV, /etc/passwd)
    or a directory: SQLite would fail on it with "file is not a database" at the first
    statement, after the pragmas of the connection and any lock file beside it."""


def check_sqlite_file(path: Path) -> None:
    """NotSqlite unless `path` is missing, empty or starts as an SQLite database does. Reads
    16 bytes; a file it cannot read is left to SQLite to say what is wrong."""
    if path.is_dir():
        raise NotSqlite(f"{path} is a directory, not an SQLite database")
    try:
        with open(path, "rb") as file:
            header = file.read(len(SQLITE_HEADER))
    except OSError:  # missing, or not readable: SQLite's own error names it
        return
    if header and header != SQLITE_HEADER:
        raise NotSqlite(f"{path} is not an SQLite database")


def created_new_database(path: Path) -> str:
    """What the server logs and the CLI's writing commands print when they made the SQLite file:
    a mistyped path, or a volume not mounted, would otherwise give an empty store quietly."""
    return f"created a new database at {path}"


def _sqlite_engine(url: sa.URL) -> sa.Engine:
    path = sqlite_file(url)
    if path is None:
        raise ValueError("an in-memory SQLite database would lose every run: give a file path")
    check_sqlite_file(path)  # before anything is made beside it
    # The directories too: `make run`'s var/ on a fresh clone. Whoever opens the store says
    # that a new database was made (a mistyped path makes one too).
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file in the way, a read-only disk: an unusable --db
        raise ValueError(f"cannot make the database's directory {exc.filename}: "
                         f"{exc.strerror}") from None
    engine = sa.create_engine(canonical_url(url), connect_args={"check_same_thread": False,
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

    watch_sqlite_file(engine)
    return engine


def watch_sqlite_file(engine: sa.Engine) -> None:
    """Refuse the engine's commits once its SQLite file is deleted or replaced (see
    _SqliteFile); a no-op for PostgreSQL. For every engine on the file: ours, and Optuna's."""
    path = sqlite_file(engine.url)
    if path is None:
        return
    file = _SqliteFile(path)
    file.opened()  # an engine that has already connected (Optuna's) is watched from now
    _FILES[engine] = file
    sa.event.listen(engine, "connect", lambda _connection, _record: file.opened())
    # Raising in the commit event rolls the transaction back: it is never acknowledged.
    sa.event.listen(engine, "commit", lambda _connection: file.check())


def check_writable(engine: sa.Engine) -> None:
    """DatabaseReadOnly if the database would refuse a write: a PostgreSQL session that is
    read-only (a standby, a demoted primary), a SQLite file or directory that cannot be
    written (its journal lives beside it). A health check: no write is made."""
    path = sqlite_file(engine.url)
    if path is not None:
        if not (os.access(path.parent, os.W_OK) and (not path.exists()
                                                      or os.access(path, os.W_OK))):
            raise DatabaseReadOnly(f"{path}, or its directory, cannot be written")
        return
    with engine.connect() as conn:
        if conn.exec_driver_sql("SHOW transaction_read_only").scalar() == "on":
            raise DatabaseReadOnly("the database takes only read-only transactions")


def check_database_file(engine: sa.Engine) -> None:
    """DatabaseFileGone if the engine's SQLite file was deleted or replaced since it was opened
    (a no-op for PostgreSQL)."""
    file = _FILES.get(engine)
    if file is not None:
        file.check()


class _SqliteFile:
    """The file an engine opened. Deleted (or replaced) under a running server, SQLite goes on
    writing to the unlinked file and every commit succeeds: acknowledged runs that vanish at the
    next start, which then makes an empty database at the path. Commits are refused instead."""

    def __init__(self, path: Path):
        self.path = path
        self.identity: tuple[int, int] | None = None  # (device, inode) when first opened

    def opened(self) -> None:
        if self.identity is None:
            self.identity = self._current()

    def check(self) -> None:
        if self.identity is not None and self._current() != self.identity:
            raise DatabaseFileGone(f"the database file {self.path} was deleted or replaced while "
                                   "the server ran: nothing more is stored in it; restart the "
                                   "server on the right file (a deleted one is lost)")

    def _current(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return None
        return stat.st_dev, stat.st_ino


_FILES: "weakref.WeakKeyDictionary[sa.Engine, _SqliteFile]" = weakref.WeakKeyDictionary()
