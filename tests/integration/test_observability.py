"""The request id comes back on failed calls too, next to the status details."""

import grpc
import pytest
from grpc_status import rpc_status

from clients.client import spec
from hparamrec.v1 import recommender_pb2 as pb
from hparamrec.v1 import recommender_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_refused_call_carries_its_request_id_and_its_field_violations(target):
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RecommenderServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Recommend(pb.RecommendRequest(spec=spec(n_params=-1.0, n_tokens=1e10)),
                           metadata=(("x-request-id", "req-7"),))
        with pytest.raises(grpc.RpcError) as missing:
            stub.GetRun(pb.GetRunRequest(run_id="nope"), metadata=(("x-request-id", "req-8"),))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert ("x-request-id", "req-7") in refused.value.trailing_metadata()
    assert rpc_status.from_call(refused.value).details  # the BadRequest is still there
    assert ("x-request-id", "req-8") in missing.value.trailing_metadata()


def test_a_stopped_service_stops_serving_metrics(tmp_path):
    """Its /metrics listener outlived it: an embedding application restarting the service, or
    a test suite, gathered listeners, and one answered for another service's port number."""
    import socket
    import time

    from tests.integration.in_process_server import running_service

    with running_service(f"sqlite:///{tmp_path / 'm.db'}", metrics_port=0) as svc:
        port = svc.metrics_port
        socket.create_connection(("127.0.0.1", port), timeout=5).close()  # serving
    deadline = time.monotonic() + 5  # it stops in the background, within its 0.5 s poll
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        except ConnectionRefusedError:
            return
        except ConnectionResetError:  # the listener closing as it took the connection
            pass
        time.sleep(0.05)
    pytest.fail(f"/metrics still listens on port {port} 5 s after the service stopped")
