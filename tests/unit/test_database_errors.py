"""What the service makes of the database's errors: whether a retry may succeed, whether the
disk is full, and a log line without the statement or its parameters (run ids, metadata)."""

import sqlite3

import psycopg.errors
import sqlalchemy.exc as sa_exc

from benchmark_db.errors import database_disk_full, database_error_summary, database_unreachable

STATEMENT, PARAMETERS = "INSERT INTO runs (run_id) VALUES (?)", ("secret-run-id",)


def raised_by_sqlalchemy(driver_error: Exception) -> sa_exc.OperationalError:
    return sa_exc.OperationalError(STATEMENT, PARAMETERS, driver_error)


def test_a_full_sqlite_disk_is_told_apart_from_a_lock():
    full = raised_by_sqlalchemy(sqlite3.OperationalError("database or disk is full"))
    locked = raised_by_sqlalchemy(sqlite3.OperationalError("database is locked"))
    assert database_unreachable(full) and database_disk_full(full)
    assert database_unreachable(locked) and not database_disk_full(locked)
    assert database_error_summary(full) == "OperationalError: database or disk is full"


def test_a_full_postgresql_disk_is_recognised_by_its_error_class():
    full = raised_by_sqlalchemy(psycopg.errors.DiskFull('could not extend file "base/1/2"'))
    assert database_disk_full(full)
    assert "secret-run-id" not in database_error_summary(full)
