"""Another process holding the SQLite file's write lock (an import, a backup, a second server
started by mistake): a write waits SQLITE_BUSY_SECONDS, under the client's deadline, then is
UNAVAILABLE, which the client retries under the same run_id; nothing is stored twice."""

import sqlite3
import threading
import time
from concurrent import futures
from contextlib import contextmanager

import pytest

from benchmark_db.engine import SQLITE_BUSY_SECONDS
from clients import Client
from clients.errors import UnavailableError
from tests.factories import client_report
from hparamrec.v1 import recommender_pb2_grpc as pb_grpc
from tests.integration.in_process_server import running_service

pytestmark = pytest.mark.integration
CLIENT_DEADLINE = 10.0  # the client's default per-attempt deadline


@contextmanager
def write_locked(path: str, seconds: float):
    """Another connection takes the file's write lock and releases it after `seconds`, or when
    the block ends if that is sooner (nothing is left to wait for the rest)."""
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    once = threading.Lock()

    def release():
        if once.acquire(blocking=False):
            holder.execute("ROLLBACK")

    timer = threading.Timer(seconds, release)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        release()
        timer.join()
        holder.close()


@pytest.fixture
def sqlite_service(tmp_path):
    path = tmp_path / "runs.db"
    with running_service(f"sqlite:///{path}", refit_poll_seconds=0) as svc:
        yield svc, str(path)


def test_the_busy_timeout_is_below_the_client_deadline():
    # Above it, a report on a locked file would time out in the client while the server still
    # waits to store it: the launcher could not tell whether the run was stored.
    assert SQLITE_BUSY_SECONDS < CLIENT_DEADLINE / 1.5


def test_reports_while_locked_are_unavailable_within_the_deadline(sqlite_service, caplog):
    svc, path = sqlite_service
    with Client(f"127.0.0.1:{svc.port}", retries=0) as client:
        client.report_run(client_report("before"))
        with write_locked(path, 2 * SQLITE_BUSY_SECONDS + 2):
            started = time.monotonic()
            with futures.ThreadPoolExecutor(6) as pool:
                calls = [pool.submit(client.report_run, client_report(f"during-{i}"))
                         for i in range(6)]
                for call in calls:
                    with pytest.raises(UnavailableError):
                        call.result()
            waited = time.monotonic() - started
        assert waited < CLIENT_DEADLINE  # every one answered, none timed out
        assert [run.run_id for run in client.iter_runs()] == ["before"]
    said = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    assert said and all("database is locked" in line for line in said)
    assert not any("during-" in line or "INSERT" in line for line in said)  # no SQL, no run ids


def test_a_report_retried_past_the_lock_is_stored_once(sqlite_service):
    svc, path = sqlite_service
    with Client(f"127.0.0.1:{svc.port}", retries=3) as client:
        with write_locked(path, SQLITE_BUSY_SECONDS + 0.5):
            result = client.report_run(client_report("retried"))
        assert result.created
        assert [run.run_id for run in client.iter_runs()] == ["retried"]


def test_calls_beyond_the_workers_and_the_pending_limit_are_refused(tmp_path):
    """HPARAMREC_MAX_PENDING_CALLS: that many calls wait for a busy worker, and the next are
    RESOURCE_EXHAUSTED at once. gRPC's own pending queue had cancelled a few at random and let
    the rest wait (10 calls past a limit of 2: 1 cancelled, 9 served)."""
    import grpc

    from clients.client import report_request

    path = tmp_path / "runs.db"
    with running_service(f"sqlite:///{path}", refit_poll_seconds=0, max_workers=1,
                         max_pending_calls=2) as svc, \
            grpc.insecure_channel(f"127.0.0.1:{svc.port}") as channel:
        stub = pb_grpc.RecommenderServiceStub(channel)

        def report(i):
            try:
                stub.ReportRun(report_request(client_report(f"burst-{i}"), {}),
                               timeout=CLIENT_DEADLINE)
                return grpc.StatusCode.OK
            except grpc.RpcError as error:
                return error.code()

        with write_locked(str(path), 2.0), futures.ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(report, range(8)))
    assert sorted(codes, key=str) == sorted([grpc.StatusCode.OK] * 3
                                            + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 5, key=str)


def test_metrics_count_calls_by_the_code_their_caller_saw(tmp_path, caplog):
    """A report answered after its deadline (the file locked), and a health check of an
    unknown service (NOT_FOUND set, not raised), were both counted and logged as OK: an
    error-rate alert on hparamrec_requests_total saw neither."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from clients.client import report_request

    path = tmp_path / "runs.db"
    with running_service(f"sqlite:///{path}", refit_poll_seconds=0) as svc, \
            grpc.insecure_channel(f"127.0.0.1:{svc.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError) as unknown:
            health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        stub = pb_grpc.RecommenderServiceStub(channel)
        with write_locked(str(path), 1.5), pytest.raises(grpc.RpcError) as late:
            stub.ReportRun(report_request(client_report("late"), {}), timeout=0.5)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not svc.metrics.registry.get_sample_value(
                "hparamrec_requests_total", {"method": "ReportRun", "code": "DEADLINE_EXCEEDED"}):
            time.sleep(0.05)  # the handler finishes once the lock is released
        count = svc.metrics.registry.get_sample_value
        assert count("hparamrec_requests_total", {"method": "Check", "code": "NOT_FOUND"}) == 1
        assert not count("hparamrec_requests_total", {"method": "Check", "code": "OK"})
        assert count("hparamrec_requests_total",
                     {"method": "ReportRun", "code": "DEADLINE_EXCEEDED"}) == 1
        assert not count("hparamrec_requests_total", {"method": "ReportRun", "code": "OK"})
    assert "ReportRun DEADLINE_EXCEEDED in" in caplog.text


def test_a_client_refused_by_a_busy_service_says_so_and_retries(tmp_path):
    """Beyond the service's calls at once, gRPC answers RESOURCE_EXHAUSTED: the client took it
    for a bad request (exit 2), and did not retry it, as it retries a service out of reach."""
    from clients.errors import UnavailableError

    path = tmp_path / "runs.db"
    with running_service(f"sqlite:///{path}", refit_poll_seconds=0, max_workers=1,
                         max_pending_calls=1) as svc:
        target = f"127.0.0.1:{svc.port}"

        def report(run_id: str, retries: int):
            with Client(target, retries=retries) as client:
                try:
                    return client.report_run(client_report(run_id)).created
                except UnavailableError as exc:
                    return str(exc)

        with write_locked(str(path), 1.0), futures.ThreadPoolExecutor(4) as pool:
            once = list(pool.map(report, [f"once-{i}" for i in range(4)], [0] * 4))
        assert sorted(map(str, once)) == ["True", "True"] + [
            f"the service at {target} is busy: it takes no more calls at once "
            "(HPARAMREC_MAX_PENDING_CALLS); retry shortly"] * 2
        with write_locked(str(path), 1.0), futures.ThreadPoolExecutor(4) as pool:
            retried = list(pool.map(report, [f"retried-{i}" for i in range(4)], [8] * 4))
        assert retried == [True] * 4
