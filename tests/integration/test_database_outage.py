"""A database out of reach (PostgreSQL refusing connections, its sessions cut) is UNAVAILABLE,
which clients retry, through the key lookup too; the service recovers when it is back."""

import time
from contextlib import contextmanager

import pytest
import sqlalchemy as sa

from benchmark_db.store import RunStore
from clients import Client
from clients.errors import UnavailableError
from tests.integration.in_process_server import running_service

pytestmark = pytest.mark.integration


def make_report(run_id: str) -> dict:
    return {"run_id": run_id, "spec": {"n_params": 1e9, "n_tokens": 2e10},
            "hyperparameters": {"lr": 1e-3, "batch_size_tokens": 1 << 20, "weight_decay": 0.1},
            "outcome": {"status": "completed", "final_loss": 2.5}}


@contextmanager
def database_altered(url: str, change: str, undo: str):
    """The test's database ALTERed by `change` (ALTER DATABASE <its name> ...), its open sessions
    cut so that the next ones see it, until the block ends (then `undo`, and cut again); the
    PostgreSQL server itself (shared by the session) stays up."""
    name = sa.make_url(url).database
    admin = sa.create_engine(sa.make_url(url).set(database="postgres",
                                                   drivername="postgresql+psycopg"),
                             isolation_level="AUTOCOMMIT")

    def alter(clause: str) -> None:
        with admin.connect() as conn:
            conn.execute(sa.text(f"ALTER DATABASE {name} {clause}"))
            conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                 "WHERE datname = :name"), {"name": name})

    alter(change)
    try:
        yield
    finally:
        alter(undo)
        admin.dispose()


def database_down(url: str):
    """Refusing new connections, its open ones cut: as when its server restarts."""
    return database_altered(url, "WITH ALLOW_CONNECTIONS false", "WITH ALLOW_CONNECTIONS true")


def database_read_only(url: str):
    """Taking only read-only transactions: what a primary demoted by a failover, or a standby,
    answers."""
    return database_altered(url, "SET default_transaction_read_only = on",
                            "SET default_transaction_read_only = off")


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("auth", [False, True])
def test_an_unreachable_database_is_unavailable_and_the_service_recovers(database_url, auth):
    key = ""
    if auth:
        store = RunStore(database_url)
        key, _ = store.keys.create("team")
        store.close()
    with running_service(database_url, auth_disabled=not auth, refit_poll_seconds=0.1) as svc:
        target = f"127.0.0.1:{svc.port}"
        with Client(target, api_key=key or None, retries=0) as client:
            assert client.report_run(make_report("before")).created
            with database_down(database_url):
                with pytest.raises(UnavailableError, match="database is unreachable"):
                    client.list_runs()  # with a key: its lookup already needs the database
                with pytest.raises(UnavailableError):
                    client.report_run(make_report("during"))
                # Health follows the database (each poll of the runs tries it).
                assert health_becomes(client, "NOT_SERVING")
            assert health_becomes(client, "SERVING")
        with Client(target, api_key=key or None, retries=5) as client:  # retried, as clients do
            assert client.report_run(make_report("after")).created
            assert {r.run_id for r in client.list_runs().runs} == {"before", "after"}


def health_becomes(client: Client, status: str, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while client.health() != status:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_read_only_database_is_unavailable_and_not_serving(database_url):
    """Reports into a read-only database were INTERNAL (which clients do not retry) while
    health said SERVING, so a load balancer kept sending calls to a replica that could store
    nothing."""
    with running_service(database_url, refit_poll_seconds=0.1) as svc:
        with Client(f"127.0.0.1:{svc.port}", retries=0) as client:
            assert client.report_run(make_report("before")).created
            with database_read_only(database_url):
                with pytest.raises(UnavailableError, match="database is read-only"):
                    client.report_run(make_report("during"))
                assert health_becomes(client, "NOT_SERVING")
                assert [r.run_id for r in client.list_runs().runs] == ["before"]  # reads work
            assert health_becomes(client, "SERVING")
        with Client(f"127.0.0.1:{svc.port}", retries=5) as client:
            assert client.report_run(make_report("after")).created


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_health_follows_the_database_with_the_poll_for_runs_off(database_url):
    """HPARAMREC_REFIT_POLL_SECONDS=0 (one replica) switched the health probe off with the
    poll it rode on: health said SERVING with the database gone."""
    with running_service(database_url, refit_poll_seconds=0) as svc:
        with Client(f"127.0.0.1:{svc.port}", retries=0) as client:
            with database_down(database_url):
                assert health_becomes(client, "NOT_SERVING")
            assert health_becomes(client, "SERVING")
