import pytest

from benchmark_db.errors import InvalidArgument
from benchmark_db.records import Pins, RunRecord, resolve_spec
from hparamrec.v1 import recommender_pb2 as pb
from predictor.prior import PriorRecommender
from service import converters
from tests.factories import make_report


def test_spec_round_trip():
    spec = resolve_spec(n_params=8e9, n_active_params=1e9, n_tokens=1e11, seq_len=4096,
                        architecture="moe", weight_bits=4)
    assert converters.spec_from_proto(converters.spec_to_proto(spec)) == spec


def test_spec_defaults_and_derived_size():
    spec = converters.spec_from_proto(pb.TrainingSpec(n_params=1e9, compute_flops=1.2e20))
    assert spec.n_tokens == pytest.approx(2e10)
    assert (spec.seq_len, spec.architecture, spec.optimizer, spec.weight_bits) == (
        2048, "dense", "adamw", 16)


def test_unset_pins_are_free_and_zero_is_a_value():
    pins = converters.pins_from_proto(pb.Pins(weight_decay=0.0))
    assert pins == Pins(weight_decay=0.0)
    with pytest.raises(InvalidArgument) as exc:
        converters.pins_from_proto(pb.Pins(lr=-1.0))
    assert exc.value.violations[0].field == "pins.lr"


def test_run_round_trip():
    from datetime import UTC, datetime

    report = make_report(metadata={"cluster": "a"}, recommendation_id="r1")
    record = RunRecord(**report.model_dump(), tenant="t", created_at=datetime(2026, 1, 2, tzinfo=UTC))
    message = converters.run_to_proto(record)
    request = pb.ReportRunRequest(run_id=message.run_id, spec=message.spec,
                                  hyperparameters=message.hyperparameters,
                                  outcome=message.outcome, metadata=message.metadata,
                                  recommendation_id=message.recommendation_id)
    assert converters.report_from_proto(request) == report
    assert message.created_at.ToDatetime(tzinfo=UTC) == record.created_at


def test_missing_status_and_weight_decay_are_named():
    request = pb.ReportRunRequest(
        run_id="x", spec=pb.TrainingSpec(n_params=1e9, n_tokens=1e10),
        hyperparameters=pb.Hyperparameters(lr=1e-3, batch_size_tokens=1e6),
        outcome=pb.RunOutcome(status=pb.RUN_STATUS_COMPLETED, final_loss=2.0))
    with pytest.raises(InvalidArgument) as exc:
        converters.report_from_proto(request)
    assert [v.field for v in exc.value.violations] == ["hyperparameters.weight_decay"]
    request.hyperparameters.weight_decay = 0.1
    request.outcome.status = pb.RUN_STATUS_UNSPECIFIED
    with pytest.raises(InvalidArgument) as exc:
        converters.report_from_proto(request)
    assert [v.field for v in exc.value.violations] == ["outcome.status"]


def test_recommendation_to_proto_carries_every_field():
    spec = resolve_spec(n_params=1e9, n_tokens=2e10, weight_bits=4)
    rec = PriorRecommender().recommend(spec, Pins())
    message = converters.recommendation_to_proto(rec)
    assert message.lr == rec.lr and message.lr_interval.hi == rec.lr_interval.hi
    assert message.batch_size_sequences * 2048 == message.batch_size_tokens
    assert message.qat_fraction == rec.qat_fraction > 0
    assert len(message.sources) == len(rec.sources)
    assert message.model_versions == list(rec.model_versions)
    assert message.spec.compute_flops == pytest.approx(1.2e20)
