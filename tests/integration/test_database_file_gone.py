"""A SQLite file deleted under a running server, or not there when it starts. Deleted, SQLite
would go on committing to the unlinked file, acknowledging runs that the next start loses: the
server refuses to store anything more, and its health says so. Not there, it is created, and
the server says so."""

import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients import Client, UnavailableError
from tests.factories import client_report
from tests.integration.in_process_server import running_service

pytestmark = pytest.mark.integration


def test_a_deleted_database_file_stops_reports_and_health(tmp_path):
    path = tmp_path / "gone.db"
    with running_service(f"sqlite:///{path}", refit_poll_seconds=0.2) as svc:
        target = f"127.0.0.1:{svc.port}"
        with Client(target, retries=0) as client:
            assert client.report_run(client_report("before")).created
            for suffix in ("", "-wal", "-shm"):
                path.with_name(path.name + suffix).unlink(missing_ok=True)
            with pytest.raises(UnavailableError, match="was deleted or replaced while the server ran"):
                client.report_run(client_report("after"))
        with grpc.insecure_channel(target) as channel:
            check = health_pb2_grpc.HealthStub(channel).Check
            deadline = time.monotonic() + 10
            while (status := check(health_pb2.HealthCheckRequest(), timeout=5).status) == \
                    health_pb2.HealthCheckResponse.SERVING and time.monotonic() < deadline:
                time.sleep(0.1)
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_a_deleted_database_file_stops_explore_trials(tmp_path):
    """The studies have an engine of their own on the file: a trial handed out after the
    deletion would be written to the unlinked file and lost, its run then reported against a
    trial that no longer exists."""
    path = tmp_path / "gone.db"
    spec = {"n_params": 1.3e9, "n_tokens": 1e11}
    with running_service(f"sqlite:///{path}") as svc:
        with Client(f"127.0.0.1:{svc.port}", retries=0) as client:
            assert client.recommend(spec, mode="explore").trial_id
            for suffix in ("", "-wal", "-shm"):
                path.with_name(path.name + suffix).unlink(missing_ok=True)
            with pytest.raises(UnavailableError, match="was deleted or replaced while the server ran"):
                client.recommend(spec, mode="explore")


def test_a_server_that_makes_a_new_database_says_so(tmp_path, caplog):
    """A --db typo or a volume not mounted would otherwise serve an empty store quietly."""
    import logging

    caplog.set_level(logging.WARNING, logger="hparamrec.server")
    url = f"sqlite:///{tmp_path / 'vol' / 'runs.db'}"
    with running_service(url):
        pass
    made = tmp_path / "vol" / "runs.db"
    assert f"created a new database at {made} (there was none: if runs were stored" in caplog.text
    caplog.clear()
    with running_service(url):  # the same file again: nothing to say
        pass
    assert "created a new database" not in caplog.text
