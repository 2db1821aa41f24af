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
