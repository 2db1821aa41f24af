"""Malformed input the fuzz tests do not reach, through a real server on SQLite and PostgreSQL:
INVALID_ARGUMENT naming the field, never INTERNAL or a silently wrong answer."""

import base64

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from clients.client import spec
from clients.errors import InvalidArgumentError, NotFoundError
from hparamrec.v1 import recommender_pb2 as pb
from hparamrec.v1 import recommender_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration


def fields_of(exc) -> list[str]:
    return [f for f, _ in exc.value.field_violations]


@pytest.mark.parametrize("value", ["99999999999999999999999", "-5", "0"])
def test_list_runs_refuses_a_page_token_that_is_no_row_id(client, value):
    token = base64.urlsafe_b64encode(f"id:{value}".encode()).decode()
    with pytest.raises(InvalidArgumentError) as exc:
        client.list_runs(page_token=token)
    assert fields_of(exc) == ["page_token"]


def report_request(run_id: str, weight_bits: int, qat_fraction: float) -> pb.ReportRunRequest:
    return pb.ReportRunRequest(
        run_id=run_id, spec=spec(n_params=1e9, n_tokens=2e10, weight_bits=weight_bits),
        hyperparameters=pb.Hyperparameters(lr=1e-3, batch_size_tokens=1e6, weight_decay=0.1,
                                           qat_fraction=qat_fraction),
        outcome=pb.RunOutcome(status=pb.RUN_STATUS_COMPLETED, final_loss=2.5))


@pytest.mark.parametrize("field, value, named", [
    ("recommendation_id", "rec\x00", "recommendation_id"),
    ("trial_id", "1-\x002", "trial_id"),
    ("metadata", {"note": "a\x00b"}, "metadata['note']"),
    ("metadata", {"no\x00te": "v"}, "metadata"),
])
def test_report_run_refuses_text_the_database_cannot_store(client, field, value, named):
    """A NUL is no PostgreSQL text: a recommendation_id with one was INTERNAL there, and was
    stored by SQLite (as NUL in metadata was by both), so the run could not move between them."""
    request = report_request("with-nul", 16, 0.0)
    if field == "metadata":
        request.metadata.update(value)
    else:
        setattr(request, field, value)
    with pytest.raises(InvalidArgumentError) as exc:
        client.report_run(request)
    assert fields_of(exc) == [named]
    with pytest.raises(NotFoundError):
        client.get_run("with-nul")


@pytest.mark.parametrize("weight_bits", [16, 32])
def test_report_run_refuses_qat_without_quantization_as_pins_do(client, weight_bits):
    with pytest.raises(InvalidArgumentError) as exc:
        client.report_run(report_request("qat-16", weight_bits, 0.5))
    assert fields_of(exc) == ["hyperparameters.qat_fraction"]
    assert f"weight_bits is {weight_bits}" in exc.value.field_violations[0][1]
    with pytest.raises(NotFoundError):
        client.get_run("qat-16")
    assert client.report_run(report_request("qat-4", 4, 0.5)).created
    assert client.report_run(report_request("no-qat-16", weight_bits, 0.0)).created


@pytest.mark.parametrize("training_spec, batch", [
    (spec(n_params=1e9, n_tokens=1e12), 1000),  # under one sequence of 2048: 0 sequences
    (spec(n_params=1e9, n_tokens=1e12, seq_len=1), 5e9),  # beyond an int32 of sequences
])
def test_recommend_refuses_a_pinned_batch_it_cannot_return_in_sequences(client, training_spec,
                                                                        batch):
    with pytest.raises(InvalidArgumentError) as exc:
        client.recommend(training_spec, pb.Pins(batch_size_tokens=batch))
    assert fields_of(exc) == ["pins.batch_size_tokens"]
    with pytest.raises(InvalidArgumentError) as exc:
        client.recommend(training_spec, pb.Pins(batch_size_tokens=batch), mode=pb.MODE_EXPLORE)
    assert fields_of(exc) == ["pins.batch_size_tokens"]


def test_recommend_takes_a_pinned_batch_of_one_sequence_up_to_the_int32_limit(client):
    one = client.recommend(spec(n_params=1e9, n_tokens=1e12), pb.Pins(batch_size_tokens=2048))
    assert (one.batch_size_tokens, one.batch_size_sequences) == (2048, 1)
    most = client.recommend(spec(n_params=1e9, n_tokens=1e12, seq_len=1),
                            pb.Pins(batch_size_tokens=2**31 - 1))
    assert most.batch_size_sequences == 2**31 - 1


@pytest.mark.parametrize("run_id", ["", "x" * 201, "a\nb", "run\n"])
def test_get_run_refuses_a_run_id_no_report_could_carry(client, run_id):
    with pytest.raises(InvalidArgumentError) as exc:
        client.get_run(run_id)
    assert fields_of(exc) == ["run_id"]


def test_predict_loss_violations_quote_plain_numbers(target):
    points = [pb.Hyperparameters(lr=5e-324), pb.Hyperparameters(lr=1e-3, batch_size_tokens=1e6,
                                                                weight_decay=float("nan"))]
    with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError) as exc:
        pb_grpc.RecommenderServiceStub(channel).PredictLoss(pb.PredictLossRequest(
            spec=spec(n_params=1e9, n_tokens=2e10), points=points))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad = error_details_pb2.BadRequest()
    assert rpc_status.from_call(exc.value).details[0].Unpack(bad)
    reasons = {v.field: v.description for v in bad.field_violations}
    assert reasons["points[0].lr"].endswith("(got 5e-324)")
    assert reasons["points[0].batch_size_tokens"] == "required"  # unset: it arrives as 0
    assert "np." not in exc.value.details() and "np." not in "".join(reasons.values())


def test_predict_loss_refuses_a_batch_of_less_than_one_sequence(client):
    """As a pin and a report do: a batch of 100 tokens with 2048-token sequences is no run's
    (PredictLoss answered 3.3 nats for it)."""
    spec_ = spec(n_params=1e9, n_tokens=2e10, seq_len=2048)
    points = [{"lr": 1e-3, "batch_size_tokens": 2048}, {"lr": 1e-3, "batch_size_tokens": 100}]
    with pytest.raises(InvalidArgumentError) as exc:
        client.predict_loss(spec_, points)
    assert exc.value.field_violations == [
        ("points[1].batch_size_tokens",
         "must be at least one sequence (spec.seq_len 2048) and at most spec.n_tokens (got 100.0)")]
    assert len(client.predict_loss(spec_, points[:1]).predictions) == 1


@pytest.mark.parametrize("name", ["weight_decay", "qat_fraction"])
def test_predict_loss_refuses_an_optional_value_sent_as_nan(client, name):
    """NaN marks an unset value inside the server: one sent was taken for unset (the timescale
    rule filled in the weight decay), where a report refuses it."""
    point = {"lr": 1e-3, "batch_size_tokens": 1e6, name: float("nan")}
    with pytest.raises(InvalidArgumentError) as exc:
        client.predict_loss(spec(n_params=1e9, n_tokens=2e10, weight_bits=4), [point])
    assert fields_of(exc) == [f"points[0].{name}"]
