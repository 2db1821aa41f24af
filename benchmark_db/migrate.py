"""Schema migrations, applied at start-up by every process that opens the store to write; and
the checks, before that, that the database is one to migrate (or, to read, one of ours)."""

import sqlite3
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from benchmark_db.engine import SQLITE_BUSY_SECONDS, NotSqlite, check_sqlite_file, sqlite_file

MIGRATIONS = Path(__file__).parent / "migrations"
# Our revision's table (migrations/env.py): Optuna's RDB storage, which shares the database for
# the refinement studies, keeps its own in Alembic's default one, where ours was kept before.
VERSION_TABLE = "hparamrec_alembic_version"
LEGACY_VERSION_TABLE = "alembic_version"
# Serialises replicas that start together on one PostgreSQL (any constant will do).
_PG_MIGRATION_LOCK = 0x68706172


class SchemaTooNew(ValueError):
    """The database was migrated by a newer hparamrec (a rollback, or an old replica restarting
    during a rolling upgrade): this one cannot know what its tables mean."""


class NotOurDatabase(ValueError):
    """The database holds no hparamrec schema where one must be: a command that only reads or
    changes what is stored found a new or empty database, or any command found a SQLite file
    holding another program's tables (a mistyped path), which it must not add its own to."""


def check_database(url: str, create: bool) -> None:
    """Checks a SQLite database before the store's engine first connects (that connection
    turns the file to WAL mode: a change, even to a database that is only read, and to
    someone else's), on a plain connection that changes nothing.

    create=True (the server, import, keys create): a new or empty file is fine (the schema is
    made in it), as is one of ours, older ones included (upgrade migrates them); one holding
    other tables and none of ours is refused: a mistyped path into another program's database.
    create=False (commands that only read or change what is stored: keys list, keys revoke):
    the file must hold our schema, no newer than ours. Either way the file must be an SQLite
    database (NotSqlite).

    For PostgreSQL only the URL's scheme is checked here (check_schema, for create=False, once
    the engine is made): other tables in its database are not refused, as the database was
    made for the service by whoever runs it, and may hold an extension's (PostGIS's
    spatial_ref_sys)."""
    parsed = sa.make_url(url)
    parsed.get_dialect()  # ArgumentError for an unknown scheme, before anything is made
    path = sqlite_file(parsed)
    if path is None:  # PostgreSQL; or an in-memory SQLite database, which create_engine refuses
        return
    check_sqlite_file(path)
    if not path.exists():
        if create:
            return
        raise NotOurDatabase(f"no database at {path}")
    uri = f"file:{urllib.parse.quote(str(path))}?mode=rw"  # rw: never creates the file

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(uri, uri=True, timeout=SQLITE_BUSY_SECONDS)

    probe = sa.create_engine("sqlite://", creator=connect, poolclass=sa.pool.NullPool)
    try:
        with probe.connect() as connection:
            _check(connection, str(path), create)
    except sa.exc.DatabaseError as exc:
        if "file is not a database" in str(exc.orig):  # an SQLite header on something else
            raise NotSqlite(f"{path} is not an SQLite database") from None
        raise
    finally:
        probe.dispose()


def check_schema(engine: sa.Engine, where: str) -> None:
    """For a command that only reads or changes what is stored, on a database check_database
    does not look into (PostgreSQL): NotOurDatabase unless it holds our schema, SchemaTooNew
    if that is newer than ours. Changes nothing. `where` names the database in the errors."""
    with engine.connect() as connection:
        _check(connection, where, create=False)


def _check(connection: sa.Connection, where: str, create: bool) -> None:
    found = _found_schema(connection)
    if found.ours:
        if not create:  # upgrade() refuses a newer one itself
            _refuse_a_newer_schema(connection, _config())
        return
    if not found.tables:
        if create:
            return
        raise NotOurDatabase(f"{where} is empty: it holds no hparamrec database")
    more = f" and {len(found.tables) - 5} more" if len(found.tables) > 5 else ""
    raise NotOurDatabase(f"{where} is not an hparamrec database: it holds other tables "
                         f"({', '.join(found.tables[:5])}{more}) and none of hparamrec's")


@dataclass(frozen=True)
class _Found:
    ours: bool  # our version table, or our revision in Alembic's default one
    tables: tuple[str, ...]  # every table, ours or not


def _found_schema(connection: sa.Connection) -> _Found:
    tables = tuple(sorted(sa.inspect(connection).get_table_names()))
    if VERSION_TABLE in tables:
        return _Found(True, tables)
    if LEGACY_VERSION_TABLE in tables:  # ours before VERSION_TABLE, or Optuna's
        legacy = sa.table(LEGACY_VERSION_TABLE, sa.column("version_num"))
        ours = _our_revisions(_config())
        if any(r in ours for r in connection.execute(sa.select(legacy.c.version_num)).scalars()):
            return _Found(True, tables)
    return _Found(False, tables)


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def upgrade(engine: sa.Engine, revision: str = "head") -> None:
    """Brings the schema to `revision` (tests stop earlier, to make an older database)."""
    config = _config()
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
        config.attributes["connection"] = connection
        _adopt_legacy_revision(connection, config)
        _refuse_a_newer_schema(connection, config)
        command.upgrade(config, revision)


def _refuse_a_newer_schema(connection: sa.Connection, config: Config) -> None:
    """SchemaTooNew, in one line, where Alembic would raise "Can't locate revision" with its
    traceback; nothing is changed."""
    if VERSION_TABLE not in sa.inspect(connection).get_table_names():
        return
    ours = _our_revisions(config)
    version = sa.table(VERSION_TABLE, sa.column("version_num"))
    unknown = [r for r in connection.execute(sa.select(version.c.version_num)).scalars()
               if r not in ours]
    if unknown:
        head = ScriptDirectory.from_config(config).get_current_head()
        raise SchemaTooNew(f"the database's schema is at revision {unknown[0]}, newer than this "
                           f"hparamrec's ({head}): upgrade hparamrec, or restore a backup made "
                           "before the upgrade")


def _our_revisions(config: Config) -> set[str]:
    return {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}


def _adopt_legacy_revision(connection: sa.Connection, config: Config) -> None:
    """A database made before our revision moved to VERSION_TABLE has it in Alembic's default
    table: move it over, so the upgrade resumes from it instead of creating every table again
    (and fails on the first one). The legacy table is dropped once nothing else is in it."""
    tables = set(sa.inspect(connection).get_table_names())
    if VERSION_TABLE in tables or LEGACY_VERSION_TABLE not in tables:
        return
    ours = _our_revisions(config)
    legacy = sa.table(LEGACY_VERSION_TABLE, sa.column("version_num"))
    found = [r for r in connection.execute(sa.select(legacy.c.version_num)).scalars() if r in ours]
    if not found:  # Optuna's revision alone
        return
    connection.execute(legacy.delete().where(legacy.c.version_num.in_(found)))
    if connection.execute(sa.select(sa.func.count()).select_from(legacy)).scalar() == 0:
        connection.execute(sa.text(f"DROP TABLE {LEGACY_VERSION_TABLE}"))
    command.stamp(config, found[0])
