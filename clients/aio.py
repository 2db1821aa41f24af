"""The typed asyncio client (grpc.aio): the same calls as Client, awaited.

    async with AsyncClient() as client:
        rec = await client.recommend(TrainingSpec(n_params="1.3B", n_tokens="100B"))
        async for run in client.iter_runs(limit=10):
            ...

Create it inside the event loop that uses it.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Iterable

import grpc

from clients import convert
from clients.client import (Settings, call_name, check_open, heartbeat_request,
                            list_runs_request, page_of, predict_loss_request, recommend_request,
                            report_request, retry_wait, seconds)
from clients.errors import ClientSettingsError, from_rpc_error, status_code
from clients.models import (HeartbeatResult, Hyperparameters, LossPredictions, Mode, Pins,
                            Recommendation, ReportResult, Run, RunPage, RunReport, TrainingSpec)
from hparamrec.v1 import recommender_pb2 as pb
from hparamrec.v1 import recommender_pb2_grpc as pb_grpc


class AsyncClient:
    """Arguments as for Client."""

    def __init__(self, target: str | None = None, *, api_key: str | None = None,
                 timeout: float = 10.0, retries: int = 3, tls: bool = False,
                 tls_ca: str | None = None):
        self.settings = Settings.resolve(target, api_key, tls, tls_ca)
        self.target = self.settings.target
        self.timeout = seconds("timeout", timeout, error=ClientSettingsError)
        self.retries = retries
        self._channel = self.settings.open_channel(grpc.aio)
        self._closed = False
        self.stub = pb_grpc.RecommenderServiceStub(self._channel)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        await self._channel.close()

    async def recommend(self, spec: TrainingSpec | dict | pb.TrainingSpec,
                        pins: Pins | dict | pb.Pins | None = None,
                        mode: Mode | str | int = Mode.EXPLOIT, *, run_id: str = "",
                        timeout: float | None = None,
                        patience: float | None = None) -> Recommendation:
        response = await self._call(self.stub.Recommend,
                                    recommend_request(spec, pins, mode, run_id), timeout, patience)
        return convert.from_proto(response.recommendation)

    async def report_run(self, report: RunReport | dict | pb.ReportRunRequest | None = None, /, *,
                         timeout: float | None = None, patience: float | None = None,
                         **fields) -> ReportResult:
        response = await self._call(self.stub.ReportRun, report_request(report, fields), timeout,
                                    patience)
        return convert.from_proto(response)

    async def list_runs(self, page_size: int = 100, page_token: str = "", *,
                        spec: TrainingSpec | dict | pb.TrainingSpec | None = None,
                        timeout: float | None = None) -> RunPage:
        request = list_runs_request(page_size, page_token, spec)
        return page_of(await self._call(self.stub.ListRuns, request, timeout), request)

    async def iter_runs(self, limit: int | None = None, page_size: int = 500, *,
                        spec: TrainingSpec | dict | pb.TrainingSpec | None = None
                        ) -> AsyncIterator[Run]:
        token, seen = "", 0
        while limit is None or seen < limit:
            size = page_size if limit is None else min(page_size, limit - seen)
            page = await self.list_runs(size, token, spec=spec)
            for run in page.runs:
                yield run
                seen += 1
            token = page.next_page_token
            if not token:
                return

    async def get_run(self, run_id: str, *, timeout: float | None = None) -> Run:
        response = await self._call(self.stub.GetRun, pb.GetRunRequest(run_id=run_id), timeout)
        return convert.from_proto(response.run)

    async def predict_loss(self, spec: TrainingSpec | dict | pb.TrainingSpec,
                           points: Iterable[Hyperparameters | dict | pb.Hyperparameters], *,
                           timeout: float | None = None) -> LossPredictions:
        response = await self._call(self.stub.PredictLoss, predict_loss_request(spec, points),
                                    timeout)
        return convert.from_proto(response)

    async def heartbeat(self, trial_id: str, *, interval_seconds: float = 0.0,
                        timeout: float | None = None) -> HeartbeatResult:
        response = await self._call(self.stub.Heartbeat,
                                    heartbeat_request(trial_id, interval_seconds), timeout)
        return convert.from_proto(response)

    async def health(self, service: str = "") -> str:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        check_open(self._closed, "Health")  # a stub made on a closed channel never answers
        stub = health_pb2_grpc.HealthStub(self._channel)
        response = await self._call(stub.Check, health_pb2.HealthCheckRequest(service=service), None)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    async def _call(self, method, request, timeout: float | None, patience: float | None = None):
        timeout = self.timeout if timeout is None else seconds("timeout", timeout)
        patience = None if patience is None else seconds("patience", patience, zero=True)
        started, attempt = time.monotonic(), 0
        while True:
            check_open(self._closed, call_name(request))
            try:
                return await method(request, timeout=timeout, metadata=self.settings.metadata)
            except grpc.aio.UsageError:  # closed by another task during the call
                check_open(self._closed, call_name(request))
                raise
            except grpc.aio.AioRpcError as error:
                wait = retry_wait(status_code(error), attempt, self.retries, patience,
                                  time.monotonic() - started)
                if wait is None:
                    raise from_rpc_error(error, self.target, timeout, self.settings.tls) from None
                await asyncio.sleep(wait)
                attempt += 1
