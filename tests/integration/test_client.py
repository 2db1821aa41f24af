"""The typed Client and AsyncClient against a real server; retries and deadlines against a real
gRPC server whose servicer misbehaves on purpose."""

import asyncio
import socket
import threading
import time
from concurrent import futures

import grpc
import pytest
from google.protobuf import json_format

from clients import client as client_module
from clients import (AsyncClient, Client, ClientClosedError, DeadlineExceededError,
                     Hyperparameters, InvalidArgumentError, NotFoundError, Pins, RunOutcome,
                     RunReport, RunStatus, TrainingSpec, UnavailableError, convert)
from hparamrec.v1 import recommender_pb2 as pb
from hparamrec.v1 import recommender_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration
SPEC = TrainingSpec(n_params="1.3B", n_tokens="100B")
HP = Hyperparameters(lr=1.2e-3, batch_size_tokens="1M", weight_decay=0.1)


@pytest.fixture
def database_url(tmp_path):
    """The client does not depend on the database kind: SQLite only."""
    return f"sqlite:///{tmp_path / 'svc.db'}"


def test_recommend_returns_a_typed_recommendation(client):
    rec = client.recommend(SPEC, Pins(batch_size_tokens="1M"))
    assert rec.batch_size_tokens == 1e6 and rec.batch_size_tokens_interval.lo == 1e6
    assert rec.lr in rec.lr_interval
    assert rec.spec.n_params == 1.3e9 and rec.spec.seq_len == 2048
    assert {s.name for s in rec.sources_for("batch_size_tokens")} == {"pinned"}
    assert client.recommend({"n_params": 1.3e9, "n_tokens": 1e11}).lr == client.recommend(SPEC).lr


def test_json_of_models_is_the_json_of_the_messages(client, target):
    """The CLI's --json contract: a model prints exactly like the message it came from."""
    client.report_run(spec=SPEC, hyperparameters=HP, outcome=RunOutcome.completed(2.41),
                      run_id="a", metadata={"k": "v"})
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RecommenderServiceStub(channel)
        request = pb.RecommendRequest(spec=convert.to_proto(SPEC))
        raw_rec = stub.Recommend(request).recommendation
        raw_run = stub.GetRun(pb.GetRunRequest(run_id="a")).run

    def as_json(message):
        return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True)

    assert convert.as_dict(convert.from_proto(raw_rec)) == as_json(raw_rec)
    assert convert.as_dict(client.get_run("a")) == as_json(raw_run)


def test_report_is_idempotent_on_run_id(client):
    first = client.report_run(RunReport(run_id="r", spec=SPEC, hyperparameters=HP,
                                        outcome=RunOutcome.completed(2.41)))
    retried = client.report_run(run_id="r", spec=SPEC, hyperparameters=HP,
                                outcome=RunOutcome.completed(2.41), metadata={"attempt": "2"})
    assert first.created and not retried.created and retried.run == first.run
    assert not retried.warnings  # the same run again: nothing to warn of
    other_spec = SPEC.model_copy(update={"n_tokens": 2 * SPEC.n_tokens})
    again = client.report_run(run_id="r", spec=other_spec, hyperparameters=HP,
                              outcome=RunOutcome.completed(9.99))
    assert not again.created and again.run == first.run
    assert len(again.warnings) == 1 and "this report was not stored" in again.warnings[0]
    assert "spec.n_tokens" in again.warnings[0] and "outcome.final_loss" in again.warnings[0]
    generated = client.report_run(spec=SPEC, hyperparameters=HP, outcome=RunOutcome.diverged())
    assert len(generated.run.run_id) == 32
    assert generated.run.outcome.status is RunStatus.DIVERGED
    assert [r.run_id for r in client.iter_runs()] == [generated.run.run_id, "r"]
    assert client.get_run("r").outcome.final_loss == 2.41


def test_errors_come_back_as_exceptions_with_field_violations(client):
    with pytest.raises(InvalidArgumentError) as exc:
        client.recommend({"n_params": -1, "n_tokens": 1e10})
    assert exc.value.field_violations[0][0] == "spec.n_params"
    with pytest.raises(InvalidArgumentError) as exc:
        client.report_run(spec=SPEC, hyperparameters=HP.model_copy(update={"weight_decay": None}),
                          outcome=RunOutcome.completed(2.4))
    assert "hyperparameters.weight_decay" in str(exc.value)
    with pytest.raises(NotFoundError):
        client.get_run("nope")
    with pytest.raises(TypeError):
        client.report_run(RunReport(spec=SPEC, hyperparameters=HP,
                                    outcome=RunOutcome.failed()), run_id="x")


def test_predict_loss_is_lowest_near_the_recommendation(client):
    rec = client.recommend(SPEC)
    points = [Hyperparameters(lr=rec.lr * f, batch_size_tokens=rec.batch_size_tokens)
              for f in (0.3, 1.0, 3.0)]
    found = client.predict_loss(SPEC, points)
    losses = [p.loss for p in found.predictions]
    assert losses[1] == pytest.approx(rec.predicted_loss, rel=1e-6)
    assert losses[1] < min(losses[0], losses[2])
    assert found.model_versions


def test_async_client_makes_the_same_calls(target):
    async def session():
        async with AsyncClient(target, retries=0) as client:
            assert await client.health() == "SERVING"
            rec = await client.recommend(SPEC)
            stored = await client.report_run(spec=SPEC, hyperparameters=rec.hyperparameters,
                                             outcome=RunOutcome.completed(2.4), run_id="async-1",
                                             recommendation_id=rec.recommendation_id)
            runs = [run async for run in client.iter_runs(limit=5)]
            with pytest.raises(NotFoundError):
                await client.get_run("nope")
            with pytest.raises(InvalidArgumentError) as exc:
                await client.recommend({"n_params": 1e9})
            assert exc.value.field_violations[0][0] == "spec.n_tokens"
            predicted = await client.predict_loss(SPEC, [rec.hyperparameters])
            return rec, stored, runs, predicted

    rec, stored, runs, predicted = asyncio.run(session())
    assert stored.created and stored.run.recommendation_id == rec.recommendation_id
    assert [r.run_id for r in runs] == ["async-1"]
    assert predicted.predictions[0].loss == pytest.approx(rec.predicted_loss, rel=1e-6)


# Every call of a closed client. grpc's own answers differ by call and by client: ValueError,
# UsageError, a health check that segfaulted (sync) or never returned (async).
CLOSED_CALLS = {
    "recommend": lambda c: c.recommend(SPEC),
    "report_run": lambda c: c.report_run(spec=SPEC, hyperparameters=HP,
                                         outcome=RunOutcome.completed(2.4), run_id="late"),
    "list_runs": lambda c: c.list_runs(),
    "get_run": lambda c: c.get_run("late"),
    "predict_loss": lambda c: c.predict_loss(SPEC, [HP]),
    "heartbeat": lambda c: c.heartbeat("1-0"),
    "health": lambda c: c.health(),
}


@pytest.mark.parametrize("call", CLOSED_CALLS)
def test_a_closed_client_says_so(target, call):
    client = Client(target, retries=0)
    assert client.health() == "SERVING"
    client.close()
    with pytest.raises(ClientClosedError, match="closed"):
        CLOSED_CALLS[call](client)
    client.close()  # closing twice is harmless


@pytest.mark.parametrize("call", CLOSED_CALLS)
def test_a_closed_async_client_says_so(target, call):
    async def session():
        async with AsyncClient(target, retries=0) as client:
            assert await client.health() == "SERVING"
        with pytest.raises(ClientClosedError, match="closed"):
            await asyncio.wait_for(CLOSED_CALLS[call](client), timeout=5)
        await client.close()

    asyncio.run(session())


# Retries and deadlines: a real gRPC server whose ReportRun fails or stalls on purpose.

class Misbehaving(pb_grpc.RecommenderServiceServicer):
    def __init__(self, unavailable_times=0, delay=0.0, slow_times=None):
        self.unavailable_times, self.delay = unavailable_times, delay
        self.slow_times = slow_times  # attempts that take `delay` (default: all)
        self.run_ids = []
        self.lock = threading.Lock()

    def ReportRun(self, request, context):
        with self.lock:
            self.run_ids.append(request.run_id)
            attempt = len(self.run_ids)
        if attempt <= self.unavailable_times:
            context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")
        if self.slow_times is None or attempt <= self.unavailable_times + self.slow_times:
            time.sleep(self.delay)
        return pb.ReportRunResponse(run=pb.Run(run_id=request.run_id), created=True)


@pytest.fixture
def misbehaving():
    servers = []

    def start(servicer):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_RecommenderServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop(0)


REPORT = RunReport(spec=SPEC, hyperparameters=HP, outcome=RunOutcome.completed(2.4))


def test_retries_reuse_the_run_id_chosen_once(misbehaving):
    servicer = Misbehaving(unavailable_times=2)
    with Client(misbehaving(servicer), retries=3) as client:
        result = client.report_run(REPORT)
    assert len(servicer.run_ids) == 3 and len(set(servicer.run_ids)) == 1
    assert result.run.run_id == servicer.run_ids[0]


def test_async_retries_reuse_the_run_id(misbehaving):
    servicer = Misbehaving(unavailable_times=1)
    target = misbehaving(servicer)

    async def report():
        async with AsyncClient(target, retries=2) as client:
            return await client.report_run(REPORT)

    assert asyncio.run(report()).run.run_id == servicer.run_ids[0] == servicer.run_ids[1]


def test_retries_give_up_with_unavailable(misbehaving):
    servicer = Misbehaving(unavailable_times=10)
    with Client(misbehaving(servicer), retries=1) as client:
        with pytest.raises(UnavailableError, match="cannot reach the service"):
            client.report_run(REPORT)
    assert len(servicer.run_ids) == 2


def test_deadline_exceeded(misbehaving):
    target = misbehaving(Misbehaving(delay=3.0))
    with Client(target, timeout=0.2, retries=0) as client:
        start = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            client.report_run(REPORT)
        assert time.monotonic() - start < 2.0  # not the handler's 3 s
        assert client.report_run(REPORT, timeout=5).created  # a per-call deadline wins


def test_a_patient_report_waits_for_a_service_that_is_not_up_yet(monkeypatch):
    """A report sent while the service restarts: nothing listens for 3 s, then it answers."""
    with socket.socket() as probe:  # a free port, closed again: nothing listens on it yet
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    servicer, servers = Misbehaving(), []

    def start_server():  # the server binds the port only now, 3 s after the first attempt
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        pb_grpc.add_RecommenderServiceServicer_to_server(servicer, server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        servers.append(server)

    failed_attempts = []
    retry_wait = client_module.retry_wait

    def counting_retry_wait(code, *args):
        failed_attempts.append(code)
        return retry_wait(code, *args)

    monkeypatch.setattr(client_module, "retry_wait", counting_retry_wait)
    later = threading.Timer(3.0, start_server)
    started = time.monotonic()
    later.start()
    try:
        with Client(f"127.0.0.1:{port}", retries=0) as client:
            with pytest.raises(UnavailableError):  # without patience: no one listens yet
                client.report_run(REPORT)
            assert client.report_run(REPORT, patience=30).created
            assert 3.0 <= time.monotonic() - started < 25
    finally:
        later.join()
        for server in servers:
            server.stop(0)
    assert len(servicer.run_ids) == 1
    assert len(failed_attempts) > 2  # the impatient call's one, then the patient call's retries
    assert set(failed_attempts) == {grpc.StatusCode.UNAVAILABLE}


def test_a_patient_report_is_retried_after_a_passed_deadline(misbehaving):
    servicer = Misbehaving(delay=1.0, slow_times=2)  # two slow answers, then quick ones
    with Client(misbehaving(servicer), timeout=0.3, retries=0) as client:
        assert client.report_run(REPORT, patience=20).created
    assert len(servicer.run_ids) == 3 and len(set(servicer.run_ids)) == 1


def test_a_patient_report_is_sent_again_when_a_stopping_server_cancelled_it(misbehaving):
    class Stopping(Misbehaving):
        def ReportRun(self, request, context):
            if not self.run_ids:
                self.run_ids.append(request.run_id)
                context.abort(grpc.StatusCode.CANCELLED, "server shutting down")
            return super().ReportRun(request, context)

    servicer = Stopping()
    with Client(misbehaving(servicer), retries=0) as client:
        assert client.report_run(REPORT, patience=10).created
    assert len(servicer.run_ids) == 2 and len(set(servicer.run_ids)) == 1


def test_a_patient_report_gives_up_once_its_patience_is_spent(misbehaving, monkeypatch):
    """Without jitter the waits are 0.1, 0.2, 0.4, 0.8 s (1.5 s in all, the 5th attempt at
    1.5 s); the next, 1.6 s, would end past the patience of 2.5 s: five attempts, then the
    error. (The calls themselves may take up to 1 s in all, on a loaded machine.)"""
    monkeypatch.setattr(client_module.random, "uniform", lambda lo, hi: (lo + hi) / 2)
    servicer = Misbehaving(unavailable_times=1000)
    with Client(misbehaving(servicer), retries=0) as client:
        started = time.monotonic()
        with pytest.raises(UnavailableError):
            client.report_run(REPORT, patience=2.5)
        assert 1.5 <= time.monotonic() - started < 20
    assert len(servicer.run_ids) == 5


def test_target_and_key_from_the_environment(monkeypatch, target):
    monkeypatch.setenv("HPARAMREC_SERVER", target)
    monkeypatch.setenv("HPARAMREC_API_KEY", "hpr_example")
    with Client() as client:
        assert client.target == target
        assert client.settings.metadata == (("authorization", "Bearer hpr_example"),)
        assert client.health() == "SERVING"


class BeforePredictLoss(pb_grpc.RecommenderServiceServicer):
    """A server from before PredictLoss: its Recommend, with lr and batch pinned, predicts a
    bowl around (1e-3, 1M); PredictLoss is UNIMPLEMENTED (the generated default)."""

    def Recommend(self, request, context):
        import math

        lr, batch = request.pins.lr, request.pins.batch_size_tokens
        loss = 2.0 + math.log(lr / 1e-3) ** 2 + math.log(batch / 1e6) ** 2
        return pb.RecommendResponse(recommendation=pb.Recommendation(
            lr=lr, batch_size_tokens=batch, predicted_loss=loss, spec=request.spec))


def test_plot_grid_falls_back_to_recommend_calls(misbehaving):
    from clients import plot

    with Client(misbehaving(BeforePredictLoss()), retries=0) as client:
        grid = plot.loss_grid(client, SPEC, [1e-4, 1e-3, 1e-2], [5e5, 1e6], Pins())
    assert grid.losses[1][1] == 2.0 and grid.losses[0][1] > grid.losses[1][1]
    assert len(grid.losses) == 2 and len(grid.losses[0]) == 3
    assert "conditional optimum" in grid.how
