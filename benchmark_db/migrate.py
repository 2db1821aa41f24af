"""Schema migrations, applied at start-up by every process that opens the store."""

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

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


def upgrade(engine: sa.Engine, revision: str = "head") -> None:
    """Brings the schema to `revision` (tests stop earlier, to make an older database)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
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
