"""Malformed and extreme requests through a real server (hypothesis): never UNKNOWN or INTERNAL,
always INVALID_ARGUMENT naming the bad field (RESOURCE_EXHAUSTED for oversized messages), the
stored runs unchanged by anything refused, deadlines honoured, and the server still healthy."""

import math
import string
from concurrent import futures

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clients.client import spec as make_spec
from hparamrec.v1 import recommender_pb2 as pb
from hparamrec.v1 import recommender_pb2_grpc as pb_grpc
from tests.factories import all_runs
from tests.integration.in_process_server import running_service

pytestmark = pytest.mark.integration
FUZZ = settings(max_examples=1000, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MAX_MESSAGE_BYTES = 1 << 20
NEVER = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    db = tmp_path_factory.mktemp("fuzz") / "fuzz.db"
    with running_service(f"sqlite:///{db}", max_message_bytes=MAX_MESSAGE_BYTES,
                         refit_debounce_seconds=0.2) as svc, \
            grpc.insecure_channel(f"127.0.0.1:{svc.port}") as channel:
        stub = pb_grpc.RecommenderServiceStub(channel)
        for i in range(3):  # something stored, to see that refused requests leave it alone
            stub.ReportRun(valid_report(f"seed-{i}", 1e-3 * (i + 1)), timeout=30)
        svc.stub, svc.channel = stub, channel
        yield svc
    for code in NEVER:  # nothing ever escaped as an unexpected error, in any test of this file
        for method in ("Recommend", "ReportRun"):
            assert not svc.metrics.registry.get_sample_value(
                "hparamrec_requests_total", {"method": method, "code": code.name})


def valid_report(run_id: str, lr: float = 1e-3) -> pb.ReportRunRequest:
    return pb.ReportRunRequest(
        run_id=run_id, spec=make_spec(n_params=1e9, n_tokens=2e10),
        hyperparameters=pb.Hyperparameters(lr=lr, batch_size_tokens=1e6, weight_decay=0.1),
        outcome=pb.RunOutcome(status=pb.RUN_STATUS_COMPLETED, final_loss=2.5),
        metadata={"cluster": "a"})


def call(method, request, timeout: float = 30):
    """(code, field violations) of a call; the response too when it succeeded."""
    try:
        return grpc.StatusCode.OK, [], method(request, timeout=timeout)
    except grpc.RpcError as error:
        violations = []
        status = rpc_status.from_call(error)
        for detail in status.details if status else ():
            bad = error_details_pb2.BadRequest()
            if detail.Unpack(bad):
                violations += [(v.field, v.description) for v in bad.field_violations]
        return error.code(), violations, None


# --- values -----------------------------------------------------------------------------------

EXTREME_FLOATS = [0.0, -0.0, -1.0, 1e-320, 5e-324, 1e-9, 999.0, 1e15, 1e18, 1e300, 1.7976931348623157e308,
                  math.nan, -math.nan, math.inf, -math.inf]
ANY_FLOAT = st.one_of(st.floats(), st.sampled_from(EXTREME_FLOATS), st.floats(1e3, 1e14))
INT32 = st.one_of(st.integers(-2**31, 2**31 - 1), st.sampled_from([0, -1, 1, 16, 32, 33, 2048, 1 << 24, (1 << 24) + 1]))
TEXT = st.one_of(st.text(max_size=300),
                 st.sampled_from(["", " ", "dense", "moe", "adamw", "Dense", "dense ", "rnn", "sgd",
                                  "\x00", "é" * 300, "x" * 5000]))
SIZE = st.floats(1e3, 1e14)


def mostly(plausible, wild):
    """Plausible three times in four, so that some of the requests are stored (answered)."""
    return st.integers(0, 3).flatmap(lambda i: wild if i == 0 else plausible)


def absurd(lo: float, hi: float, integral: bool = False):
    """Values outside [lo, hi] (and, for floats, NaN and infinities)."""
    if integral:
        return st.one_of(st.integers(-2**31, int(lo) - 1), st.integers(int(hi) + 1, 2**31 - 1))
    return st.one_of(st.sampled_from([math.nan, math.inf, -math.inf, -0.0 if lo > 0 else -1.0]),
                     st.floats(max_value=lo, exclude_max=True),
                     st.floats(min_value=hi, exclude_min=True))


@st.composite
def any_spec(draw) -> pb.TrainingSpec:
    fields = {}
    for name in ("n_params", "n_active_params", "n_tokens", "compute_flops"):
        if draw(st.booleans()):
            fields[name] = draw(ANY_FLOAT)
    for name in ("seq_len", "weight_bits"):
        if draw(st.booleans()):
            fields[name] = draw(INT32)
    for name in ("architecture", "optimizer"):
        if draw(st.booleans()):
            fields[name] = draw(TEXT)
    return pb.TrainingSpec(**fields)


@st.composite
def valid_spec(draw) -> pb.TrainingSpec:
    n_params = draw(st.floats(1e6, 1e12))
    return pb.TrainingSpec(n_params=n_params, n_tokens=draw(st.floats(1e9, 1e13)),
                           seq_len=draw(st.sampled_from([512, 2048, 8192])),
                           weight_bits=draw(st.sampled_from([4, 8, 16])))


# One bad value in one field of an otherwise valid request, and the field it must be blamed on.
SPEC_MUTATIONS = {
    "spec.n_params": absurd(1e3, 1e14),
    "spec.n_tokens": absurd(1e3, 1e17),
    "spec.n_active_params": st.one_of(absurd(1e3, 1e14), st.just("above n_params")),
    "spec.compute_flops": st.one_of(st.sampled_from([math.nan, math.inf, -1.0, 0.0]),
                                    st.just("inconsistent")),
    "spec.seq_len": absurd(1, 1 << 24, integral=True),
    "spec.weight_bits": absurd(1, 32, integral=True),
    "spec.architecture": TEXT.filter(lambda s: s.lower() not in ("", "dense", "moe")),  # any case
    "spec.optimizer": TEXT.filter(lambda s: s.lower() not in ("", "adamw")),
}


def mutate_spec(spec: pb.TrainingSpec, field: str, value) -> None:
    name = field.split(".", 1)[1]
    if value == "above n_params":
        value = spec.n_params * 2
    elif value == "inconsistent":
        value = 6 * spec.n_params * spec.n_tokens * 1.5
    setattr(spec, name, value)


# --- Recommend --------------------------------------------------------------------------------

PIN_MUTATIONS = {
    "pins.lr": st.one_of(st.just(0.0), absurd(0, 10)),
    "pins.batch_size_tokens": absurd(1, 1e12),
    "pins.weight_decay": absurd(0, 100),
    "pins.qat_fraction": st.one_of(absurd(0, 1), st.floats(0.01, 1)),  # any QAT on a 16-bit run
}


@FUZZ
@given(data=st.data())
def test_recommend_blames_the_one_bad_field(server, data):
    request = pb.RecommendRequest(spec=data.draw(valid_spec()))
    request.spec.weight_bits = 16
    field = data.draw(st.sampled_from(sorted(SPEC_MUTATIONS) + sorted(PIN_MUTATIONS) + ["mode"]))
    if field in SPEC_MUTATIONS:
        mutate_spec(request.spec, field, data.draw(SPEC_MUTATIONS[field]))
    elif field in PIN_MUTATIONS:
        setattr(request.pins, field.split(".")[1], data.draw(PIN_MUTATIONS[field]))
    else:
        request.mode = data.draw(st.integers(-2**31, 2**31 - 1).filter(lambda m: m not in pb.Mode.values()))
    code, violations, _ = call(server.stub.Recommend, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (field, request)
    assert [f for f, _ in violations] == [field], (request, violations)
    assert all(reason for _, reason in violations)


def unset_or(values):
    return st.one_of(st.none(), values)


@st.composite
def plausible_pins(draw) -> pb.Pins:
    """Each pin unset or in range (a QAT fraction above 0 is still refused on a 16-bit run)."""
    values = {"lr": draw(unset_or(st.floats(1e-5, 1e-1))),
              "batch_size_tokens": draw(unset_or(st.floats(1e4, 1e8))),
              "weight_decay": draw(unset_or(st.floats(0, 1))),
              "qat_fraction": draw(unset_or(st.sampled_from([0.0, 0.5, 1.0])))}
    return pb.Pins(**{name: value for name, value in values.items() if value is not None})


@FUZZ
@given(spec=mostly(valid_spec(), any_spec()),
       pins=mostly(plausible_pins(),
                   st.builds(pb.Pins, lr=ANY_FLOAT, batch_size_tokens=ANY_FLOAT,
                             weight_decay=ANY_FLOAT, qat_fraction=ANY_FLOAT) | st.just(pb.Pins())),
       # Explore in one valid mode of five: each opens a study (a new one per spec), ~5x the
       # cost of an exploit.
       mode=mostly(st.sampled_from([pb.MODE_UNSPECIFIED, pb.MODE_EXPLOIT] * 2 + [pb.MODE_EXPLORE]),
                   st.integers(-2**31, 2**31 - 1)))
def test_recommend_anything_is_answered_or_refused_precisely(server, spec, pins, mode):
    code, violations, response = call(server.stub.Recommend,
                                      pb.RecommendRequest(spec=spec, pins=pins, mode=mode))
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT), code
    if code == grpc.StatusCode.OK:
        rec = response.recommendation
        values = (rec.lr, rec.batch_size_tokens, rec.weight_decay, rec.qat_fraction, rec.predicted_loss)
        assert all(math.isfinite(v) for v in values) and rec.lr > 0 and rec.batch_size_tokens >= 1
        assert rec.weight_decay >= 0 and 0 <= rec.qat_fraction <= 1 and rec.recommendation_id
        assert bool(rec.trial_id) == (mode == pb.MODE_EXPLORE), (mode, rec.trial_id)
    else:
        assert violations and all(f.split(".")[0].split("[")[0] in ("spec", "pins", "mode")
                                  for f, _ in violations), violations


# --- ReportRun --------------------------------------------------------------------------------

REPORT_MUTATIONS = {
    "run_id": st.one_of(st.just(""), st.text(min_size=201, max_size=400),
                        st.text(min_size=1, max_size=20).map(lambda s: s + "\n")),
    "hyperparameters.lr": absurd(0, 10),
    "hyperparameters.batch_size_tokens": st.one_of(absurd(1, 1e12), st.just("above n_tokens")),
    "hyperparameters.weight_decay": st.one_of(absurd(0, 100), st.just("unset")),
    "hyperparameters.qat_fraction": absurd(0, 1),
    "outcome.status": st.integers(-2**31, 2**31 - 1).filter(lambda s: s not in (1, 2, 3)),
    "outcome.final_loss": st.one_of(st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -1.0, "unset"]),
                                    st.floats(1e3, 1e300, exclude_min=True)),
    "metadata": st.one_of(
        st.just({"": "empty key"}),
        st.text(min_size=257, max_size=300).map(lambda k: {k: "v"}),
        st.dictionaries(st.text(string.ascii_letters, min_size=1, max_size=8), st.just("v"),
                        min_size=65, max_size=80),
        st.text(min_size=4097, max_size=5000).map(lambda v: {"k": v})),
    "recommendation_id": st.text(min_size=201, max_size=400),
    "trial_id": st.one_of(st.text(min_size=1, max_size=50), st.text(min_size=201, max_size=400)),
    "spec": st.just("unset"),
}


@FUZZ
@given(data=st.data())
def test_report_run_blames_the_one_bad_field_and_stores_nothing(server, data):
    request = pb.ReportRunRequest(
        run_id="never-" + data.draw(st.text(string.ascii_letters + string.digits + "-_.", max_size=40)),
        spec=data.draw(valid_spec()),
        hyperparameters=pb.Hyperparameters(lr=data.draw(st.floats(1e-5, 1.0)),
                                           # at least one sequence of valid_spec's longest
                                           batch_size_tokens=data.draw(st.floats(1e4, 1e8)),
                                           weight_decay=data.draw(st.floats(0, 1))),
        outcome=pb.RunOutcome(status=pb.RUN_STATUS_COMPLETED, final_loss=data.draw(st.floats(1, 5))))
    field = data.draw(st.sampled_from(sorted(SPEC_MUTATIONS) + sorted(REPORT_MUTATIONS)))
    value = data.draw(SPEC_MUTATIONS[field] if field in SPEC_MUTATIONS else REPORT_MUTATIONS[field])
    if field in SPEC_MUTATIONS:
        mutate_spec(request.spec, field, value)
    elif field == "spec":
        request.ClearField("spec")
    elif field == "metadata":
        request.metadata.update(value)
    elif field == "outcome.status":
        request.outcome.status = value
    elif field == "outcome.final_loss":
        if value == "unset":
            request.outcome.ClearField("final_loss")
        else:
            request.outcome.final_loss = value
    elif field.startswith("hyperparameters."):
        name = field.split(".")[1]
        if value == "unset":
            request.hyperparameters.ClearField(name)
        elif value == "above n_tokens":
            request.hyperparameters.batch_size_tokens = request.spec.n_tokens * 2
        else:
            setattr(request.hyperparameters, name, value)
    else:
        setattr(request, field, value)
    code, violations, _ = call(server.stub.ReportRun, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (field, request)
    blamed = [f.split("[")[0] for f, _ in violations]
    assert blamed == [field], (request, violations)
    with pytest.raises(grpc.RpcError) as missing:
        server.stub.GetRun(pb.GetRunRequest(run_id=request.run_id), timeout=30)
    # A run_id no report could carry is refused by GetRun too.
    assert missing.value.code() == (grpc.StatusCode.INVALID_ARGUMENT if field == "run_id"
                                    else grpc.StatusCode.NOT_FOUND)


@FUZZ
@given(run_id=mostly(st.text(string.ascii_letters + string.digits, min_size=1, max_size=30), TEXT),
       spec=mostly(valid_spec(), any_spec()),
       hp=st.builds(pb.Hyperparameters, lr=mostly(st.floats(1e-5, 1), ANY_FLOAT),
                    batch_size_tokens=mostly(st.floats(1e4, 1e8), ANY_FLOAT),
                    weight_decay=mostly(st.floats(0, 1), ANY_FLOAT),
                    qat_fraction=mostly(st.floats(0, 1), ANY_FLOAT)),
       outcome=st.builds(pb.RunOutcome, status=mostly(st.sampled_from([1, 2, 3]), INT32),
                         final_loss=mostly(st.floats(1, 10), ANY_FLOAT)),
       metadata=mostly(st.dictionaries(st.text(min_size=1, max_size=20), st.text(max_size=50), max_size=5),
                       st.dictionaries(TEXT, TEXT, max_size=5)),
       recommendation_id=mostly(st.text(max_size=50), TEXT))
def test_report_run_anything_is_stored_or_refused_precisely(server, run_id, spec, hp, outcome,
                                                            metadata, recommendation_id):
    request = pb.ReportRunRequest(run_id=run_id, spec=spec, hyperparameters=hp, outcome=outcome,
                                  metadata=metadata, recommendation_id=recommendation_id)
    code, violations, response = call(server.stub.ReportRun, request)
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT), code
    if code == grpc.StatusCode.OK:
        server.accepted[response.run.run_id] = response.run
    else:
        roots = ("run_id", "spec", "hyperparameters", "outcome", "metadata", "recommendation_id")
        assert violations and all(f.split(".")[0].split("[")[0] in roots for f, _ in violations), violations


@pytest.fixture(scope="module", autouse=True)
def unchanged(server):
    """Around the whole file: what is stored at the end is what was stored at the start plus
    exactly the runs whose report was acknowledged, as acknowledged."""
    before = {r.run_id: r for r in all_runs(server.stub)}
    server.accepted = {}
    yield
    after = {r.run_id: r for r in all_runs(server.stub)}
    assert after == before | server.accepted


# --- sizes and deadlines ----------------------------------------------------------------------

@settings(max_examples=12, deadline=None, derandomize=True, database=None)
@given(size=st.integers(MAX_MESSAGE_BYTES + 1, 4 * MAX_MESSAGE_BYTES), where=st.sampled_from(
    ["run_id", "metadata", "architecture"]))
def test_oversized_messages_are_resource_exhausted(server, size, where):
    request = valid_report("oversized")
    if where == "run_id":
        request.run_id = "r" * size
    elif where == "metadata":
        request.metadata.update({f"k{i}": "v" * 4096 for i in range(size // 4096 + 1)})
    else:
        request.spec.architecture = "a" * size
    assert request.ByteSize() > MAX_MESSAGE_BYTES
    for method, message in ((server.stub.ReportRun, request),
                            (server.stub.Recommend, pb.RecommendRequest(spec=request.spec))):
        code, _, _ = call(method, message)
        if message is request or where == "architecture":
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_metadata_at_the_limits_is_stored_and_just_over_is_refused(server):
    at_limit = valid_report("big-metadata")
    at_limit.metadata.clear()
    at_limit.metadata.update({f"{i:0256d}"[:256]: "v" * 4096 for i in range(64)})
    code, _, response = call(server.stub.ReportRun, at_limit)
    assert code == grpc.StatusCode.OK and len(response.run.metadata) == 64
    server.accepted["big-metadata"] = response.run
    over = valid_report("big-metadata-2")
    over.metadata.clear()
    over.metadata.update({f"k{i}": "v" * 4096 for i in range(65)})
    code, violations, _ = call(server.stub.ReportRun, over)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and [f for f, _ in violations] == ["metadata"]


def test_deadlines_are_honoured_and_the_server_stays_healthy(server):
    # gRPC keeps deadlines to about a millisecond, so a call this short may still be answered
    # in time; whatever happens, it ends in one of these two ways.
    with futures.ThreadPoolExecutor(16) as pool:
        tiny = [pool.submit(call, server.stub.Recommend,
                            pb.RecommendRequest(spec=make_spec(n_params=1e9 + i, n_tokens=2e10)), 1e-6)
                for i in range(200)]
        codes = {f.result()[0] for f in tiny}
    assert codes <= {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.OK}
    # Reports whose deadline ran out may or may not have been stored; a retry settles it.
    with futures.ThreadPoolExecutor(16) as pool:
        racing = [pool.submit(call, server.stub.ReportRun, valid_report(f"deadline-{i}"), 0.002 * (i % 5))
                  for i in range(100)]
        codes = {f.result()[0] for f in racing}
    assert codes <= {grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED}
    for i in range(100):
        code, _, response = call(server.stub.ReportRun, valid_report(f"deadline-{i}"))
        assert code == grpc.StatusCode.OK
        server.accepted[response.run.run_id] = response.run
    health = health_pb2_grpc.HealthStub(server.channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
        health_pb2.HealthCheckResponse.SERVING
    code, _, _ = call(server.stub.Recommend, pb.RecommendRequest(spec=make_spec(n_params=1e9, n_tokens=2e10)))
    assert code == grpc.StatusCode.OK


def test_a_call_whose_deadline_passes_in_the_queue_is_not_run(tmp_path):
    """One worker, kept busy by large ListRuns pages: a report queued behind them past its
    deadline gets DEADLINE_EXCEEDED and is never stored (its handler does not run)."""
    from benchmark_db.store import RunStore
    from service.converters import report_from_proto

    url = f"sqlite:///{tmp_path / 'queue.db'}"
    store = RunStore(url)
    bulky = []
    for i in range(1000):
        request = valid_report(f"bulky-{i}")
        request.metadata.update({f"k{j:02d}": "x" * 60 for j in range(45)})
        bulky.append(report_from_proto(request))
    store.add_many("default", bulky)
    store.close()
    with running_service(url, max_workers=1,
                         predictor="prior") as svc:  # no costly refit on 1,000 runs
        with grpc.insecure_channel(f"127.0.0.1:{svc.port}") as channel:
            stub = pb_grpc.RecommenderServiceStub(channel)
            pages = [stub.ListRuns.future(pb.ListRunsRequest(page_size=1000), timeout=120)
                     for _ in range(16)]  # enough queued work that 50 ms surely passes
            code, _, _ = call(stub.ReportRun, valid_report("too-late"), timeout=0.05)
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert all(len(p.result().runs) == 1000 for p in pages)  # the queue drained
            code, _, _ = call(stub.GetRun, pb.GetRunRequest(run_id="too-late"))
            assert code == grpc.StatusCode.NOT_FOUND
        assert not svc.metrics.registry.get_sample_value(  # no handler ran it to completion
            "hparamrec_requests_total", {"method": "ReportRun", "code": "OK"})
