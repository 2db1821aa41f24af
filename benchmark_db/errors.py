"""Domain errors shared by every layer; service/errors.py maps each to one gRPC status."""

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    field: str  # dotted path in the request, e.g. "spec.n_params"
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


class DomainError(Exception):
    """Base of the errors a caller can act on."""


class InvalidArgument(DomainError):
    def __init__(self, violations: list[FieldViolation]):
        self.violations = violations
        super().__init__("; ".join(str(v) for v in violations))

    @classmethod
    def single(cls, field: str, reason: str) -> "InvalidArgument":
        return cls([FieldViolation(field, reason)])


class NotFound(DomainError):
    pass


class DatabaseFileGone(DomainError):
    """The SQLite file was deleted or replaced under the running server: nothing is stored
    until it restarts (UNAVAILABLE: a client retrying through another replica, or later, loses
    nothing)."""


class DatabaseReadOnly(DomainError):
    """The database takes no writes: a read-only file or disk, a PostgreSQL standby, or a
    primary demoted by a failover (UNAVAILABLE: another replica, or the promoted primary a
    retry reaches, can store the run)."""


def database_unreachable(exc: BaseException) -> bool:
    """Whether the error (or one it was raised from: Optuna wraps SQLAlchemy's) is the database
    being out of reach: down, restarting, its connections cut, its pool exhausted, SQLite's
    file locked, or taking no writes. Such a call may succeed if retried, which UNAVAILABLE
    tells clients to do."""
    from sqlalchemy import exc as sa_exc

    for cause in _chain(exc):
        if isinstance(cause, (sa_exc.OperationalError, sa_exc.TimeoutError, DatabaseFileGone,
                              DatabaseReadOnly)):
            return True
        if isinstance(cause, sa_exc.DBAPIError) and cause.connection_invalidated:
            return True
    return database_read_only(exc)


# What SQLite (SQLITE_READONLY) and PostgreSQL (read_only_sql_transaction, SQLSTATE 25006, an
# InternalError to SQLAlchemy) say to a write they cannot take.
_READ_ONLY = ("attempt to write a readonly database", "in a read-only transaction")


def database_read_only(exc: BaseException) -> bool:
    if any(isinstance(cause, DatabaseReadOnly) for cause in _chain(exc)):
        return True
    summary = database_error_summary(exc).lower()
    return any(words in summary for words in _READ_ONLY)


# What SQLite (SQLITE_FULL), PostgreSQL (disk_full, SQLSTATE 53100) and the OS say when the
# database's disk is full: not an outage that a retry in a moment outlives.
_DISK_FULL = ("database or disk is full", "no space left on device", "diskfull")


def database_disk_full(exc: BaseException) -> bool:
    summary = database_error_summary(exc).lower()
    return any(words in summary for words in _DISK_FULL)


def database_error_summary(exc: BaseException) -> str:
    """One line on what the database said, for logs. Not str(exc): SQLAlchemy puts the statement
    and its parameters there (run ids, hyperparameters, metadata), and Optuna's wrapper says
    "invalid data in the commit" whatever went wrong."""
    from sqlalchemy import exc as sa_exc

    for cause in _chain(exc):
        if isinstance(cause, (DatabaseFileGone, DatabaseReadOnly)):
            return str(cause)
        if isinstance(cause, sa_exc.DBAPIError) and cause.orig is not None:
            said = str(cause.orig).strip().split("\n", 1)[0]
            return f"{type(cause.orig).__name__}: {said}"[:300]
        if isinstance(cause, sa_exc.TimeoutError):  # the pool's, raised before any statement
            return f"{type(cause).__name__}: {str(cause).split('(Background', 1)[0].strip()}"[:300]
    return type(exc).__name__


def _chain(exc: BaseException | None):
    """The error and those it was raised from or during, outermost first."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__
