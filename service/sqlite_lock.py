"""One server per SQLite file. Two would each lock their studies in-process only: the same
explore trial handed to two launchers, and Optuna's schema created twice at once (INTERNAL).
Several replicas need PostgreSQL, whose advisory locks they share."""

import fcntl
import os
from typing import IO

from benchmark_db.engine import sqlite_file


class SqliteFileTaken(Exception):
    """Another server holds the file."""


def hold_sqlite_file(url: str) -> IO | None:
    """Takes the SQLite file of `url` for this process, until it exits (a crash releases it):
    the open lock file beside it, to keep; None for PostgreSQL, or a path where no lock file
    can be made (the store, opening the database, says what is wrong with it)."""
    path = sqlite_file(url)
    if path is None:
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_name(path.name + ".serve-lock"), "a+")
    except OSError:
        return None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "?"
        lock.close()
        raise SqliteFileTaken(f"--db: another hparamrec server (pid {holder}) serves {path}; "
                              "a SQLite database takes one server (several replicas need "
                              "PostgreSQL)") from None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def release_sqlite_file(lock: IO | None) -> None:
    """Lets the file go, and removes the lock file: a start refused once it was taken (a schema
    too new, settings the store refuses) leaves nothing beside the database."""
    if lock is None:
        return
    try:
        os.unlink(lock.name)
    except OSError:
        pass
    lock.close()
