"""A thin synchronous client: proto messages in and out, errors as exceptions, retries."""

import os
import time
import uuid
from collections.abc import Iterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.errors import from_rpc_error
from hparamrec.v1 import recommender_pb2 as pb
from hparamrec.v1 import recommender_pb2_grpc as pb_grpc

DEFAULT_TARGET = "127.0.0.1:50051"
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE,)


def spec(**fields) -> pb.TrainingSpec:
    """TrainingSpec from keyword fields, e.g. spec(n_params=1.3e9, n_tokens=1e11)."""
    return pb.TrainingSpec(**{k: v for k, v in fields.items() if v is not None})


def _channel(target: str, tls: bool, tls_ca: str | None) -> grpc.Channel:
    if not (tls or tls_ca):
        return grpc.insecure_channel(target)
    roots = None
    if tls_ca:
        with open(tls_ca, "rb") as f:
            roots = f.read()
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=roots))


class Client:
    """Every call is idempotent (ReportRun through its run_id), so UNAVAILABLE is retried.

    api_key defaults to $HPARAMREC_API_KEY; tls_ca (a PEM file) or tls=True (system roots)
    switch to TLS."""

    def __init__(self, target: str = DEFAULT_TARGET, *, api_key: str | None = None,
                 timeout: float = 10.0, retries: int = 3, tls: bool = False,
                 tls_ca: str | None = None):
        self.target = target
        self.timeout = timeout
        self.retries = retries
        api_key = api_key or os.environ.get("HPARAMREC_API_KEY")
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self._channel = _channel(target, tls, tls_ca)
        self._stub = pb_grpc.RecommenderServiceStub(self._channel)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def recommend(self, training_spec: pb.TrainingSpec, pins: pb.Pins | None = None,
                  mode: int = pb.MODE_EXPLOIT) -> pb.Recommendation:
        request = pb.RecommendRequest(spec=training_spec, pins=pins, mode=mode)
        return self._call(self._stub.Recommend, request).recommendation

    def report_run(self, request: pb.ReportRunRequest) -> pb.ReportRunResponse:
        if not request.run_id:
            request.run_id = uuid.uuid4().hex  # chosen once, so retries cannot duplicate
        return self._call(self._stub.ReportRun, request)

    def list_runs(self, page_size: int = 100, page_token: str = "") -> pb.ListRunsResponse:
        return self._call(self._stub.ListRuns,
                          pb.ListRunsRequest(page_size=page_size, page_token=page_token))

    def iter_runs(self, limit: int | None = None, page_size: int = 500) -> Iterator[pb.Run]:
        token, seen = "", 0
        while True:
            page = self.list_runs(page_size if limit is None else min(page_size, limit - seen), token)
            for run in page.runs:
                yield run
                seen += 1
            token = page.next_page_token
            if not token or (limit is not None and seen >= limit):
                return

    def get_run(self, run_id: str) -> pb.Run:
        return self._call(self._stub.GetRun, pb.GetRunRequest(run_id=run_id)).run

    def health(self, service: str = "") -> str:
        stub = health_pb2_grpc.HealthStub(self._channel)
        response = self._call(stub.Check, health_pb2.HealthCheckRequest(service=service))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def _call(self, method, request):
        for attempt in range(self.retries + 1):
            try:
                return method(request, timeout=self.timeout, metadata=self._metadata)
            except grpc.RpcError as error:
                if error.code() not in _RETRYABLE or attempt == self.retries:
                    raise from_rpc_error(error) from None
                time.sleep(min(2.0, 0.1 * 2**attempt))
