"""API keys and tenants through a real server."""

import time

import grpc
import pytest

from benchmark_db.store import RunStore
from clients.client import Client, spec
from clients.errors import NotFoundError, UnauthenticatedError
from hparamrec.v1 import recommender_pb2 as pb
from service.server import ConfigurationError, Service
from service.settings import Settings
from tests.factories import self_signed_pair
from tests.integration.in_process_server import QUICK_REFITS, running_service

pytestmark = pytest.mark.integration


def report(run_id: str, loss: float = 2.5) -> pb.ReportRunRequest:
    return pb.ReportRunRequest(
        run_id=run_id, spec=spec(n_params=1e9, n_tokens=2e10),
        hyperparameters=pb.Hyperparameters(lr=1e-3, batch_size_tokens=1e6, weight_decay=0.1),
        outcome=pb.RunOutcome(status=pb.RUN_STATUS_COMPLETED, final_loss=loss))


@pytest.fixture
def db_url(tmp_path):
    return f"sqlite:///{tmp_path / 'auth.db'}"


@pytest.fixture
def keys(db_url):
    store = RunStore(db_url)
    alice, _ = store.keys.create("alice", "laptop")
    bob, _ = store.keys.create("bob")
    yield {"alice": alice, "bob": bob, "store": store}
    store.close()


@pytest.fixture
def secured(db_url, keys):
    with running_service(db_url, auth_disabled=False, refit_debounce_seconds=QUICK_REFITS) as svc:
        yield f"127.0.0.1:{svc.port}"


def test_missing_or_wrong_key_is_unauthenticated(secured, keys):
    with Client(secured, retries=0) as anonymous:
        with pytest.raises(UnauthenticatedError, match="missing"):
            anonymous.recommend(spec(n_params=1e9, n_tokens=2e10))
    forged = keys["alice"][:-4] + "AAAA"
    for bad in (forged, "hpr_nope_nope", "garbage"):
        with Client(secured, api_key=bad, retries=0) as client:
            with pytest.raises(UnauthenticatedError):
                client.list_runs()


def test_a_key_read_from_a_file_with_its_newline_works(secured, keys):
    """Key files and secrets often end in a newline, which gRPC refuses in a header: it failed
    with a C-core trace before the call."""
    for padded in (keys["alice"] + "\n", f"  {keys['alice']}\t"):
        with Client(secured, api_key=padded, retries=0) as client:
            assert client.list_runs().runs == []


def test_health_and_reflection_stay_open(secured):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with Client(secured, retries=0) as anonymous:
        assert anonymous.health() == "SERVING"
    with grpc.insecure_channel(secured) as channel:  # no key sent
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([
            reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for s in next(responses).list_services_response.service}
    assert {"hparamrec.v1.RecommenderService", "grpc.health.v1.Health"} <= names


def test_tenants_are_isolated(secured, keys):
    with Client(secured, api_key=keys["alice"], retries=0) as alice, \
            Client(secured, api_key=keys["bob"], retries=0) as bob:
        alice.report_run(report("shared-name", 2.5))
        assert [r.run_id for r in bob.list_runs().runs] == []
        with pytest.raises(NotFoundError):
            bob.get_run("shared-name")
        # The same run_id is a different run in another tenant.
        assert bob.report_run(report("shared-name", 3.0)).created
        assert alice.get_run("shared-name").outcome.final_loss == 2.5
        assert bob.get_run("shared-name").outcome.final_loss == 3.0


def test_revoked_key_stops_working_at_once(secured, keys):
    with Client(secured, api_key=keys["alice"], retries=0) as alice:
        alice.list_runs()
        key_id = keys["alice"].split("_")[1]
        info = keys["store"].keys.revoke(key_id)
        assert info.revoked_at is not None
        with pytest.raises(UnauthenticatedError, match="revoked"):
            alice.list_runs()


def test_failed_calls_are_logged_with_the_tenant_or_the_refused_keys_id(secured, keys, caplog):
    """An operator can tell whose calls fail, and trace a revoked key still in use, from the
    logs, which never hold a key's secret."""
    import logging

    caplog.set_level(logging.WARNING, logger="hparamrec.rpc")
    key_id = keys["alice"].split("_")[1]
    with Client(secured, api_key=keys["alice"], retries=0) as alice:
        with pytest.raises(NotFoundError):
            alice.get_run("nope")
        keys["store"].keys.revoke(key_id)
        with pytest.raises(UnauthenticatedError):
            alice.list_runs()
    with Client(secured, api_key="hpr_x_y", retries=0) as junk:
        with pytest.raises(UnauthenticatedError):
            junk.list_runs()
    lines = [r.getMessage() for r in caplog.records if r.name == "hparamrec.rpc"]
    assert any(line.startswith("GetRun NOT_FOUND") and line.endswith(", tenant alice")
               for line in lines)
    assert any(line.startswith("ListRuns UNAUTHENTICATED") and line.endswith(f", key {key_id}")
               for line in lines)
    assert any(line.endswith(", key malformed") for line in lines)
    assert not any(keys["alice"].split("_", 2)[2] in line for line in lines)


def test_key_metadata_header_forms(secured, keys):
    from hparamrec.v1 import recommender_pb2_grpc as pb_grpc

    with grpc.insecure_channel(secured) as channel:
        stub = pb_grpc.RecommenderServiceStub(channel)
        stub.ReportRun(report("bobs"), metadata=(("x-api-key", keys["bob"]),))
        listed = stub.ListRuns(pb.ListRunsRequest(),
                               metadata=(("authorization", f"Bearer {keys['bob']}"),))
        assert [r.run_id for r in listed.runs] == ["bobs"]  # both forms are bob's tenant
        others = stub.ListRuns(pb.ListRunsRequest(), metadata=(("x-api-key", keys["alice"]),))
        assert "bobs" not in [r.run_id for r in others.runs]


def test_keys_are_stored_hashed(keys):
    import sqlalchemy as sa

    with keys["store"].engine.connect() as conn:
        dumped = " ".join(str(v) for row in conn.execute(sa.text("SELECT * FROM api_keys")) for v in row)
    assert keys["alice"] not in dumped and keys["alice"].split("_", 2)[2] not in dumped


def test_refuses_non_loopback_without_keys(db_url):
    import threading

    before = {t.name for t in threading.enumerate()}
    with pytest.raises(ConfigurationError, match="--no-auth"):
        Service(Settings(database_url=db_url, metrics_port=None, host="0.0.0.0", port=0))
    # The refit and group-commit threads it had started are stopped, not left behind.
    deadline = time.monotonic() + 5
    while ({"hparamrec-refit", "hparamrec-group-commit"} & {t.name for t in threading.enumerate()}
           - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not {"hparamrec-refit", "hparamrec-group-commit"} & (
        {t.name for t in threading.enumerate()} - before)


def test_explicit_no_auth_serves_the_default_tenant(db_url):
    with running_service(db_url, host="0.0.0.0", auth_disabled=True,
                         refit_debounce_seconds=QUICK_REFITS) as svc:
        with Client(f"127.0.0.1:{svc.port}", retries=0) as client:
            client.report_run(report("a"))
        assert RunStore(db_url).count("default") == 1


def test_a_key_sent_to_a_server_without_authentication_is_refused(db_url, keys):
    """The caller means to act as its key's tenant: it is told, rather than served as the
    tenant every caller of this server shares."""
    with running_service(db_url, auth_disabled=True, refit_debounce_seconds=QUICK_REFITS) as svc:
        with Client(f"127.0.0.1:{svc.port}", api_key=keys["alice"], retries=0) as client:
            with pytest.raises(UnauthenticatedError, match="without authentication"):
                client.report_run(report("a"))
        with Client(f"127.0.0.1:{svc.port}", retries=0) as client:
            client.report_run(report("b"))
    assert keys["store"].count("default") == 1 and keys["store"].count("alice") == 0


def test_a_streaming_method_is_not_served_unauthenticated(keys):
    """No method of the service streams today; one added must not bypass the key check."""
    from concurrent import futures

    from service.auth import AuthInterceptor

    def count(request, context):
        yield from (b"1", b"2")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2),
                         interceptors=[AuthInterceptor(keys["store"].keys)])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "test.Counter", {"Count": grpc.unary_stream_rpc_method_handler(count)})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_stream("/test.Counter/Count")
            with pytest.raises(grpc.RpcError) as raised:
                list(call(b"", timeout=5))
        assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop(None)


@pytest.fixture
def tls_server(tmp_path, db_url, keys):
    """A server with authentication and TLS: (its target, its certificate's file)."""
    cert, key = self_signed_pair(tmp_path)
    with running_service(db_url, auth_disabled=False, tls_cert_file=str(cert),
                         tls_key_file=str(key)) as svc:
        yield f"localhost:{svc.port}", str(cert)


def test_tls_with_a_server_certificate(tls_server, keys):
    target, cert = tls_server
    with Client(target, api_key=keys["alice"], tls_ca=cert, retries=0) as client:
        assert client.list_runs().runs == []


def test_a_client_and_server_that_disagree_on_tls_are_told_so(tls_server, keys, tmp_path):
    from clients.errors import UnavailableError

    target, cert = tls_server
    with Client(target, api_key=keys["alice"], retries=0) as plaintext:
        with pytest.raises(UnavailableError, match="if the server serves TLS, connect with"):
            plaintext.list_runs()
    with running_service(f"sqlite:///{tmp_path / 'plain.db'}") as plain:
        with Client(f"localhost:{plain.port}", tls_ca=cert, retries=0) as tls:
            with pytest.raises(UnavailableError, match="does not seem to serve TLS"):
                tls.list_runs()
