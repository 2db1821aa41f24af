"""The real server on a free port, through the client library."""

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from clients.client import spec
from clients.errors import InvalidArgumentError, NotFoundError
from hparamrec.v1 import recommender_pb2 as pb
from predictor import laws
from benchmark_db.records import resolve_spec

pytestmark = pytest.mark.integration


def report_request(run_id="run-1", **hp) -> pb.ReportRunRequest:
    hyper = {"lr": 1.2e-3, "batch_size_tokens": 1e6, "weight_decay": 0.1} | hp
    return pb.ReportRunRequest(
        run_id=run_id, spec=spec(n_params=1.3e9, n_tokens=1e11),
        hyperparameters=pb.Hyperparameters(**hyper),
        outcome=pb.RunOutcome(status=pb.RUN_STATUS_COMPLETED, final_loss=2.41),
        metadata={"cluster": "a"})


def test_recommend_zero_shot(client):
    rec = client.recommend(spec(n_params=1e9, n_tokens=2e10))
    s = resolve_spec(n_params=1e9, n_tokens=2e10)
    assert rec.lr == pytest.approx(laws.STEPLAW_LR(s), rel=0.02)
    assert rec.batch_size_tokens == pytest.approx(laws.STEPLAW_BATCH(s), rel=0.02)
    assert rec.lr_interval.lo < rec.lr < rec.lr_interval.hi
    assert rec.recommendation_id and rec.model_versions == ["prior@1"]
    assert {s.field for s in rec.sources} >= {"lr", "batch_size_tokens", "weight_decay"}


def test_recommend_with_pinned_batch(client):
    rec = client.recommend(spec(n_params=1.3e9, n_tokens=1e11), pb.Pins(batch_size_tokens=1e6))
    assert rec.batch_size_tokens == 1e6
    assert rec.batch_size_tokens_interval.lo == rec.batch_size_tokens_interval.hi == 1e6


def test_report_is_idempotent_and_listed(client):
    first = client.report_run(report_request())
    again = client.report_run(report_request())
    assert first.created and not again.created
    assert again.run == first.run
    runs = client.list_runs().runs
    assert [r.run_id for r in runs] == ["run-1"]
    assert client.get_run("run-1").metadata == {"cluster": "a"}


def test_list_runs_pages(client):
    for i in range(5):
        client.report_run(report_request(f"r{i}"))
    assert [r.run_id for r in client.iter_runs(page_size=2)] == [f"r{i}" for i in reversed(range(5))]
    assert len(list(client.iter_runs(limit=3, page_size=2))) == 3


def test_get_missing_run(client):
    with pytest.raises(NotFoundError):
        client.get_run("nope")


def test_explore_mode_returns_a_trial(client):  # the refinement loop: tests/integration/test_refine.py
    assert client.recommend(spec(n_params=1e9, n_tokens=2e10), mode=pb.MODE_EXPLORE).trial_id


def test_a_mixture_of_experts_on_the_published_laws(client):
    """Every call of a MoE spec answered by the prior: its loss model rebuilds the spec from the
    run table's sizes, which keep no architecture (a dense 10B with 1B active was refused)."""
    moe = spec(n_params=1e10, n_active_params=1e9, n_tokens=1e11)
    rec = client.recommend(moe)
    point = {"lr": rec.lr, "batch_size_tokens": rec.batch_size_tokens}
    assert client.predict_loss(moe, [point]).predictions[0].loss == pytest.approx(rec.predicted_loss)
    assert client.recommend(moe, mode=pb.MODE_EXPLORE).trial_id
    assert client.recommend(moe, mode=pb.MODE_EXPLORE).trial_id  # scored by the prior's loss


@pytest.mark.parametrize("training_spec, field", [
    (spec(n_params=-1.0, n_tokens=1e10), "spec.n_params"),
    (spec(n_params=0.0, n_tokens=1e10), "spec.n_params"),
    (spec(n_params=float("nan"), n_tokens=1e10), "spec.n_params"),
    (spec(n_params=1e9, n_tokens=float("inf")), "spec.n_tokens"),
    (spec(n_params=1e9), "spec.n_tokens"),
    (spec(n_params=1e9, n_tokens=1e10, architecture="rnn"), "spec.architecture"),
])
def test_bad_spec_is_invalid_argument_with_field(client, training_spec, field):
    with pytest.raises(InvalidArgumentError) as exc:
        client.recommend(training_spec)
    assert [f for f, _ in exc.value.field_violations] == [field]


@pytest.mark.parametrize("change, field", [
    ({"batch_size_tokens": 1e12}, "hyperparameters.batch_size_tokens"),
    ({"lr": float("nan")}, "hyperparameters.lr"),
    ({"lr": -1e-3}, "hyperparameters.lr"),
    ({"lr": 5e-324}, "hyperparameters.lr"),  # underflows the models' AdamW timescale
    ({"weight_decay": float("inf")}, "hyperparameters.weight_decay"),
])
def test_bad_report_changes_nothing(client, change, field):
    client.report_run(report_request("keep"))
    before = client.list_runs()
    with pytest.raises(InvalidArgumentError) as exc:
        client.report_run(report_request("keep", **change))
    assert field in [f for f, _ in exc.value.field_violations]
    with pytest.raises(InvalidArgumentError):
        client.report_run(report_request("new", **change))
    assert client.list_runs() == before


def test_bad_pins(client):
    with pytest.raises(InvalidArgumentError) as exc:
        client.recommend(spec(n_params=1e9, n_tokens=1e10), pb.Pins(qat_fraction=0.5))
    assert exc.value.field_violations[0][0] == "pins.qat_fraction"
    with pytest.raises(InvalidArgumentError) as exc:
        client.recommend(spec(n_params=1e9, n_tokens=1e10), pb.Pins(lr=1e-300))
    assert exc.value.field_violations == [("pins.lr", "must be at least 1e-10 (got 1e-300)")]


@pytest.mark.parametrize("loss", [1e-300, 5e-324, 0.009])
def test_an_implausibly_small_loss_is_refused_and_changes_nothing(client, loss):
    """A completed run's loss sets its group's level in every model fitted on it: a loss in
    the wrong unit (or a bug's 1e-300) would skew every recommendation of the tenant."""
    client.report_run(report_request("keep"))
    before = client.list_runs()
    request = report_request("tiny")
    request.outcome.final_loss = loss
    with pytest.raises(InvalidArgumentError) as exc:
        client.report_run(request)
    [(field, reason)] = exc.value.field_violations
    assert field == "outcome.final_loss" and "nats per token" in reason
    assert client.list_runs() == before
    request.outcome.final_loss = 0.01  # the bound itself is a loss
    assert client.report_run(request).created


def test_rows_stored_before_the_plausibility_bounds_still_load(service, client):
    """Bounds added later (the least lr and completed loss) apply to new input only: a row
    stored before them is still read, listed and fitted on."""
    import sqlalchemy as sa

    from benchmark_db.schema import runs

    client.report_run(report_request("old"))
    assert service.registry.wait_idle(timeout=120)  # the refit on the report as it came in
    before = service.registry.get("default")
    with service.store.engine.begin() as conn:
        conn.execute(sa.update(runs).where(runs.c.run_id == "old")
                     .values(final_loss=1e-300, lr=1e-300))
    old = client.get_run("old")
    assert (old.outcome.final_loss, old.hyperparameters.lr) == (1e-300, 1e-300)
    assert [r.run_id for r in client.list_runs().runs] == ["old"]
    service.registry.schedule_refit("default")  # as a restart, or another report, would
    assert service.registry.wait_idle(timeout=120)
    # A new model, fitted on the old row (a failed refit keeps the previous one).
    assert service.registry.get("default") not in (None, before)
    assert service.registry.fitted_on("default") == 1
    assert client.recommend(spec(n_params=1e9, n_tokens=1e10)).lr > 0


def test_raw_status_carries_bad_request_details(target):
    from grpc_status import rpc_status
    from google.rpc import error_details_pb2

    from hparamrec.v1 import recommender_pb2_grpc as pb_grpc

    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RecommenderServiceStub(channel)
        with pytest.raises(grpc.RpcError) as exc:
            stub.Recommend(pb.RecommendRequest(spec=spec(n_params=-5.0, n_tokens=1e10)))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(exc.value)
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert bad_request.field_violations[0].field == "spec.n_params"
    assert "positive" in bad_request.field_violations[0].description


def test_health(client):
    assert client.health() == "SERVING"
    assert client.health("hparamrec.v1.RecommenderService") == "SERVING"


def test_reflection_lists_the_services(target):
    with grpc.insecure_channel(target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([
            reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for s in next(responses).list_services_response.service}
    assert {"hparamrec.v1.RecommenderService", "grpc.health.v1.Health"} <= names


def test_stop_reports_not_serving(database_url, monkeypatch):
    """Service.stop() says NOT_SERVING first, while it still takes calls and drains those in
    flight: probes and load balancers turn away before the port closes."""
    import threading
    import time

    from grpc_health.v1 import health_pb2_grpc

    from clients import Client
    from service.server import Service
    from service.settings import Settings

    service = Service(Settings(database_url=database_url, port=0, metrics_port=None,
                               auth_disabled=True))
    entered, release = threading.Event(), threading.Event()
    recommend = service.engine.recommend

    def held_recommend(*args, **kwargs):
        entered.set()
        assert release.wait(timeout=120)
        return recommend(*args, **kwargs)

    monkeypatch.setattr(service.engine, "recommend", held_recommend)
    service.start()
    target, answers = f"127.0.0.1:{service.port}", []
    stopping = threading.Thread(target=service.stop, kwargs={"grace": 20})
    with Client(target, retries=0, timeout=120) as client:
        in_flight = threading.Thread(target=lambda: answers.append(
            client.recommend(spec(n_params=1e9, n_tokens=2e10))))
        in_flight.start()
        try:
            assert entered.wait(timeout=60)
            stopping.start()
            with grpc.insecure_channel(target) as channel:
                health = health_pb2_grpc.HealthStub(channel)
                deadline = time.monotonic() + 60
                # Each check is a call: stop() keeps taking them (for up to half its grace)
                # while one is in flight; were health left SERVING, the port would close under it.
                while (status := health.Check(health_pb2.HealthCheckRequest(), timeout=10).status) \
                        == health_pb2.HealthCheckResponse.SERVING and time.monotonic() < deadline:
                    time.sleep(0.02)
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        finally:
            release.set()
            in_flight.join(timeout=120)
            if stopping.ident is None:  # failed before stop() began
                service.stop(grace=1)
            else:
                stopping.join(timeout=120)
    assert not stopping.is_alive() and service.registry.closed
    assert len(answers) == 1 and answers[0].lr > 0  # the call in flight was drained, answered


def test_metrics_count_requests_by_method_and_code(service, client):
    import urllib.request

    client.recommend(spec(n_params=1e9, n_tokens=2e10))
    with pytest.raises(InvalidArgumentError):
        client.recommend(spec(n_params=-1.0, n_tokens=1e10))
    text = urllib.request.urlopen(f"http://127.0.0.1:{service.metrics_port}/metrics").read().decode()
    assert 'hparamrec_requests_total{code="OK",method="Recommend"} 1.0' in text
    assert 'hparamrec_requests_total{code="INVALID_ARGUMENT",method="Recommend"} 1.0' in text
    assert 'hparamrec_request_seconds_count{method="Recommend"} 2.0' in text


def test_request_id_is_echoed(target):
    from hparamrec.v1 import recommender_pb2_grpc as pb_grpc

    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RecommenderServiceStub(channel)
        _, call = stub.ListRuns.with_call(pb.ListRunsRequest(), metadata=(("x-request-id", "abc123"),))
        assert ("x-request-id", "abc123") in call.trailing_metadata()
        _, call = stub.ListRuns.with_call(pb.ListRunsRequest())
        assert len(dict(call.trailing_metadata())["x-request-id"]) == 16


def test_json_logs_carry_the_request_id(capsys):
    import json
    import logging

    from service.observability import _request_id, configure_logging

    configure_logging("json")
    token = _request_id.set("req-42")
    try:
        logging.getLogger("hparamrec.test").warning("hello %s", "world")
    finally:
        _request_id.reset(token)
        logging.getLogger().handlers.clear()
    entry = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert entry["msg"] == "hello world" and entry["request_id"] == "req-42"
    assert entry["level"] == "warning"


def test_python_warnings_are_json_lines_too(capsys):
    import json
    import logging
    import warnings

    from service.observability import configure_logging

    # pytest puts warnings.showwarning back after each test; logging would think it still
    # captures them from an earlier test's configure_logging and not capture them again.
    logging.captureWarnings(False)
    configure_logging("json")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("invalid value encountered in divide", RuntimeWarning)
    finally:
        logging.captureWarnings(False)
        logging.getLogger().handlers.clear()
    entry = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert entry["logger"] == "py.warnings" and "invalid value encountered" in entry["msg"]


@pytest.mark.parametrize("access_log", [False, True])
def test_the_access_log_has_a_line_per_call_when_asked(tmp_path, caplog, access_log):
    import logging

    from clients import Client
    from tests.integration.in_process_server import running_service

    caplog.set_level(logging.INFO, logger="hparamrec.rpc")
    with running_service(f"sqlite:///{tmp_path / 'r.db'}", access_log=access_log) as svc:
        with Client(f"127.0.0.1:{svc.port}") as client:
            client.list_runs()
            with pytest.raises(NotFoundError):
                client.get_run("nope")
    lines = [r.getMessage() for r in caplog.records if r.name == "hparamrec.rpc"]
    assert any(line.startswith("GetRun NOT_FOUND in ") for line in lines)  # failures: always
    assert any(line.startswith("ListRuns OK in ") for line in lines) == access_log


def test_predict_loss_over_points(client, target):
    from hparamrec.v1 import recommender_pb2_grpc as pb_grpc

    rec = client.recommend(spec(n_params=1e9, n_tokens=2e10))
    points = [pb.Hyperparameters(lr=rec.lr * f, batch_size_tokens=rec.batch_size_tokens)
              for f in (0.25, 1.0, 4.0)]
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RecommenderServiceStub(channel)
        response = stub.PredictLoss(pb.PredictLossRequest(spec=spec(n_params=1e9, n_tokens=2e10),
                                                          points=points))
        losses = [p.loss for p in response.predictions]
        assert losses[1] == pytest.approx(rec.predicted_loss, rel=1e-6)
        assert losses[1] < min(losses[0], losses[2])
        assert all(p.loss_interval.lo < p.loss < p.loss_interval.hi for p in response.predictions)
        # An unset weight decay follows the timescale rule, as the recommendation's does.
        assert response.predictions[1].hyperparameters.weight_decay == pytest.approx(rec.weight_decay)
        with pytest.raises(grpc.RpcError) as exc:
            stub.PredictLoss(pb.PredictLossRequest(spec=spec(n_params=1e9, n_tokens=2e10),
                                                   points=[pb.Hyperparameters(lr=-1, batch_size_tokens=1e6)]))
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "points[0].lr" in exc.value.details()
        with pytest.raises(grpc.RpcError) as exc:  # its timescale would be infinite: no NaN loss
            stub.PredictLoss(pb.PredictLossRequest(spec=spec(n_params=1e9, n_tokens=2e10),
                                                   points=[pb.Hyperparameters(lr=5e-324, batch_size_tokens=1e6)]))
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "points[0].lr" in exc.value.details()


def test_predict_loss_takes_one_to_max_points(target):
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    from hparamrec.v1 import recommender_pb2_grpc as pb_grpc
    from service.converters import MAX_PREDICT_POINTS

    point = pb.Hyperparameters(lr=1e-3, batch_size_tokens=1e6)
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RecommenderServiceStub(channel)

        def predict(n):
            return stub.PredictLoss(pb.PredictLossRequest(
                spec=spec(n_params=1e9, n_tokens=2e10), points=[point] * n), timeout=60)

        assert len(predict(MAX_PREDICT_POINTS).predictions) == MAX_PREDICT_POINTS
        for n in (0, MAX_PREDICT_POINTS + 1):
            with pytest.raises(grpc.RpcError) as exc:
                predict(n)
            assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            bad_request = error_details_pb2.BadRequest()
            assert rpc_status.from_call(exc.value).details[0].Unpack(bad_request)
            assert [v.field for v in bad_request.field_violations] == ["points"]
            assert f"got {n}" in bad_request.field_violations[0].description


@pytest.mark.parametrize("sizes", [
    dict(n_params=1e3, n_tokens=3e3),  # the timescale rule asks for a weight decay of 7
    dict(n_params=1e14, n_tokens=3e3),  # ... of 823
    dict(n_params=1e6, n_tokens=2e6, seq_len=2**20),  # one sequence is half the tokens
    dict(n_params=1e9, n_tokens=1e17, seq_len=1),  # a batch of more sequences than an int32
])
def test_recommendations_of_extreme_specs_can_be_reported_as_they_are(client, sizes):
    """What the service recommends, exploit or explore, is a configuration its ReportRun accepts:
    the laws extrapolated this far ask for more, and are clamped with a warning."""
    for mode in (pb.MODE_EXPLOIT, pb.MODE_EXPLORE):
        rec = client.recommend(spec(**sizes), mode=mode)
        assert 1 <= rec.batch_size_sequences <= 2**31 - 1
        assert rec.batch_size_tokens <= sizes["n_tokens"]
        assert rec.batch_size_tokens_interval.lo <= rec.batch_size_tokens <= rec.batch_size_tokens_interval.hi
        assert rec.weight_decay_interval.lo <= rec.weight_decay <= rec.weight_decay_interval.hi <= 100
        hyper = pb.Hyperparameters(lr=rec.lr, batch_size_tokens=rec.batch_size_tokens,
                                   weight_decay=rec.weight_decay, qat_fraction=rec.qat_fraction)
        if mode == pb.MODE_EXPLOIT:  # the loss predicted is that of the values recommended
            at = client.predict_loss(spec(**sizes), [hyper])
            assert rec.predicted_loss == pytest.approx(at.predictions[0].loss, rel=1e-9)
            assert (rec.predicted_loss_interval.lo, rec.predicted_loss_interval.hi) == pytest.approx(
                (at.predictions[0].loss_interval.lo, at.predictions[0].loss_interval.hi), rel=1e-9)
        stored = client.report_run(pb.ReportRunRequest(
            run_id=f"as-recommended-{mode}", spec=spec(**sizes), hyperparameters=hyper,
            trial_id=rec.trial_id, recommendation_id=rec.recommendation_id,
            outcome=pb.RunOutcome(status=pb.RUN_STATUS_COMPLETED, final_loss=5.0)))
        assert stored.created


def test_a_spec_of_fewer_tokens_than_one_sequence_is_refused(client):
    with pytest.raises(InvalidArgumentError) as exc:
        client.recommend(spec(n_params=1e3, n_tokens=1e3))
    assert exc.value.field_violations == [
        ("spec.n_tokens", "fewer than one sequence of seq_len 2048 tokens")]


def test_build_server_is_a_whole_server_to_start_and_stop(tmp_path):
    """The embedding entry point: started, it answers with its health, refits and store; it
    returned a bare grpc.Server, which served SERVING health without any of them."""
    from clients import Client
    from service.server import build_server
    from service.settings import Settings

    server, port = build_server(Settings(database_url=f"sqlite:///{tmp_path / 'e.db'}", port=0,
                                         metrics_port=None, auth_disabled=True,
                                         refit_debounce_seconds=0.1))
    server.start()
    try:
        with Client(f"127.0.0.1:{port}", retries=0) as client:
            assert client.health("hparamrec.warm") in ("SERVING", "NOT_SERVING")  # registered
            assert client.recommend(spec(n_params=1e9, n_tokens=2e10)).lr > 0
            assert client.report_run(report_request("embedded")).created  # stored...
        assert server.registry.wait_idle(timeout=120)
        assert server.registry.fitted_on("default") == 1  # ...and refitted on
        assert server.registry.get("default") is not None
    finally:
        server.stop(1)
    assert server.registry.closed
