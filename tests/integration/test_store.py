"""One storage suite, run against SQLite and a real PostgreSQL."""

import base64
import threading

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from benchmark_db.errors import InvalidArgument, NotFound
from benchmark_db.schema import metadata
from benchmark_db import store as store_module
from benchmark_db.store import RunStore
from tests.factories import make_report

pytestmark = pytest.mark.integration


def ours(name, type_, parent_names) -> bool:
    """Our tables only: the version table and Optuna's tables share the database."""
    return type_ != "table" or name in metadata.tables


def test_migrations_create_exactly_the_declared_schema(store):
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"include_name": ours}),
                                metadata)
    assert diff == []


def test_optuna_storage_can_share_the_database(store, database_url):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(storage=optuna.storages.RDBStorage(database_url), study_name="s")
    RunStore(database_url).close()  # our migrations still find their own version table
    assert optuna.load_study(study_name="s", storage=database_url).trials == []


def test_a_database_from_before_our_version_table_is_upgraded_with_its_rows(database_url):
    """Releases before hparamrec_alembic_version kept our revision in Alembic's default table
    (which Optuna also uses): opening such a database resumes from that revision; it created
    every table again before, and failed on the first."""
    from datetime import UTC, datetime

    from benchmark_db.migrate import upgrade

    engine = sa.create_engine(database_url)
    upgrade(engine, "0002")  # runs and api_keys, as that release left them
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE hparamrec_alembic_version"))
        conn.execute(sa.text(  # as Alembic makes its default version table
            "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL, "
            "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))"))
        conn.execute(sa.text("INSERT INTO alembic_version VALUES ('0002')"))
        conn.execute(sa.text(
            "INSERT INTO api_keys (key_id, key_hash, tenant, label, created_at) "
            "VALUES ('k1', :h, 'team', 'old', :t)"), {"h": "0" * 64, "t": datetime.now(UTC)})
    engine.dispose()
    store = RunStore(database_url)
    try:
        assert [k.key_id for k in store.keys.list()] == ["k1"]
        store.report("t", make_report("after"))  # 0003's trial_id column is there
        with store.engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            version = conn.execute(sa.text("SELECT version_num FROM hparamrec_alembic_version"))
            assert "alembic_version" not in tables and version.scalar() == "0006"
    finally:
        store.close()


def test_a_database_migrated_by_a_newer_release_is_refused_in_one_line_and_left_alone(
        store, database_url):
    """A rollback, or an old replica restarting during a rolling upgrade."""
    from benchmark_db.migrate import SchemaTooNew

    store.report("t", make_report("a"))
    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE hparamrec_alembic_version SET version_num = '0099'"))
    with pytest.raises(SchemaTooNew, match="the database's schema is at revision 0099, newer "
                                           "than this hparamrec's \\(0006\\): upgrade"):
        RunStore(database_url)
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM runs")).scalar() == 1
        assert conn.execute(sa.text("SELECT version_num FROM hparamrec_alembic_version")
                            ).scalar() == "0099"


def test_reopening_an_upgraded_database_is_a_no_op(store, database_url):
    store.report("t", make_report("a"))
    again = RunStore(database_url)
    assert again.count("t") == 1
    again.close()


def test_report_round_trip(store):
    report = make_report("a", metadata={"cluster": "x"}, recommendation_id="rec-1")
    stored, created = store.report("t", report)
    assert created
    fetched = store.get("t", "a")
    assert fetched == stored
    assert fetched.model_dump(exclude={"tenant", "created_at"}) == report.model_dump()
    assert fetched.created_at.tzinfo is not None


def test_resent_run_id_returns_the_stored_run(store):
    first, _ = store.report("t", make_report("a", loss=2.5))
    again, created = store.report("t", make_report("a", loss=9.9))
    assert not created and again == first and store.count("t") == 1


def test_concurrent_reports_of_one_run_id_store_it_once(store):
    results = []

    def send():
        results.append(store.report("t", make_report("same"))[1])

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    assert store.count("t") == 1


def test_tenants_never_see_each_other(store):
    store.report("alice", make_report("a"))
    store.report("bob", make_report("a", loss=3.0))
    assert store.get("alice", "a").outcome.final_loss == 2.5
    assert store.get("bob", "a").outcome.final_loss == 3.0
    assert [r.run_id for r in store.all_runs("carol")] == []
    with pytest.raises(NotFound):
        store.get("carol", "a")


def test_paging_newest_first(store):
    for i in range(7):
        store.report("t", make_report(f"r{i}"))
    seen, token = [], ""
    while True:
        page, token = store.page("t", page_size=3, page_token=token)
        seen += [r.run_id for r in page]
        if not token:
            break
    assert seen == [f"r{i}" for i in reversed(range(7))]


def token_of(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


# Not base64; an earlier release's row ids (beyond the 64-bit column the driver overflowed:
# INTERNAL); no run, or no run of this tenant ("b" is another tenant's); a NUL (PostgreSQL
# cannot hold one: INTERNAL); longer than any run_id.
@pytest.mark.parametrize("token", ["garbage", "aWQ6eA==", token_of("id:99999999999999999999999"),
                                   token_of(f"id:{2**63}"), token_of("id:5"), token_of("run:"),
                                   token_of("run:nosuchrun"), token_of("run:b"),
                                   token_of("run:a\x00"), token_of("run:" + "a" * 201)])
def test_bad_page_token(store, token):
    store.report("t", make_report("a"))
    store.report("other", make_report("b"))
    with pytest.raises(InvalidArgument) as exc:
        store.page("t", page_token=token)
    assert exc.value.violations[0].field == "page_token"


def test_a_page_token_says_nothing_of_other_tenants_runs(store):
    """It named the row id, which counts every tenant's runs: two tenants with the same runs
    got different tokens when a third had stored runs between theirs."""
    for i in range(3):
        store.report("quiet", make_report(f"r{i}"))
        store.report("busy", make_report(f"r{i}"))
    store.report_many([("other", make_report(f"o{i}")) for i in range(20)])
    store.report("busy", make_report("r3"))
    store.report("quiet", make_report("r3"))
    pages = {tenant: store.page(tenant, page_size=2) for tenant in ("quiet", "busy")}
    assert pages["quiet"][1] == pages["busy"][1]
    rest, _ = store.page("busy", page_size=2, page_token=pages["busy"][1])
    assert [r.run_id for r in rest] == ["r1", "r0"]


def test_a_run_stored_before_a_rule_was_added_still_reads(store):
    """Runs are read back as they were accepted: QAT on a 16-bit run was once accepted."""
    store.report("t", make_report("a"))
    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE runs SET qat_fraction = 0.5"))
    assert store.get("t", "a").hyperparameters.qat_fraction == 0.5
    assert [r.hyperparameters.qat_fraction for r in store.page("t")[0]] == [0.5]
    assert [r.run_id for r in store.all_runs("t")] == ["a"]


def test_add_many_is_idempotent(store):
    reports = [make_report(f"r{i}") for i in range(5)]
    assert store.add_many("t", reports) == 5
    assert store.add_many("t", reports + [make_report("r5"), make_report("r5")]) == 1
    assert store.count("t") == 6


def test_add_many_skips_a_run_another_writer_stored_after_its_lookup(store, database_url):
    """Two imports of overlapping files at once: the other commits one of our runs between our
    lookup of the stored ids and our insert (here, just before the insert). It is skipped as
    already stored; it was an IntegrityError that failed the whole import with a traceback."""
    other = RunStore(database_url)
    raced = []

    @sa.event.listens_for(store.engine, "before_cursor_execute")
    def _other_writer_first(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("INSERT INTO RUNS") and not raced:
            raced.append(other.report("t", make_report("r1")))

    try:
        assert store.add_many("t", [make_report(f"r{i}") for i in range(3)]) == 2
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", _other_writer_first)
        other.close()
    assert raced and raced[0][1]  # the other writer did store r1 first
    assert sorted(r.run_id for r in store.all_runs("t")) == ["r0", "r1", "r2"]


def test_add_many_inserts_in_chunks_within_one_transaction(store, monkeypatch):
    monkeypatch.setattr(store_module, "INSERT_CHUNK", 3)
    assert store.add_many("t", [make_report(f"r{i}") for i in range(8)]) == 8
    assert store.count("t") == 8
    broken = make_report("x7")  # fails once two chunks of its batch are inserted
    broken = broken.model_copy(update={"outcome": broken.outcome.model_construct(status=None)})
    with pytest.raises(AttributeError):
        store.add_many("u", [make_report(f"x{i}") for i in range(7)] + [broken])
    assert store.count("u") == 0


def test_failed_insert_leaves_store_unchanged(store):
    store.report("t", make_report("a"))
    with pytest.raises(sa.exc.StatementError):
        with store.engine.begin() as conn:  # a constraint violation mid-transaction
            conn.execute(sa.text("UPDATE runs SET status = NULL"))
    assert store.get("t", "a").outcome.status == "completed"


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_postgresql_connections_name_their_process(store):
    """Replicas' connections told apart in pg_stat_activity."""
    import os

    with store.engine.connect() as conn:
        name = conn.scalar(sa.text("SELECT application_name FROM pg_stat_activity "
                                   "WHERE pid = pg_backend_pid()"))
    assert name == f"hparamrec pid {os.getpid()}"
