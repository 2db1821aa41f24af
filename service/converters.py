"""Proto messages <-> domain models. Validation errors name proto field paths."""

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from benchmark_db.errors import FieldViolation, InvalidArgument
from benchmark_db.records import (MAX_LR, MAX_WEIGHT_DECAY, MIN_LR, Pins, RunRecord, RunReport,
                                  RunStatus, SpecFilter, TrainingSpec, resolve_spec, validated)
from hparamrec.v1 import recommender_pb2 as pb
from predictor.recommendation import Interval, Recommendation
from predictor.trial_timeouts import TrialStatus

_STATUS_TO_DOMAIN = {
    pb.RUN_STATUS_COMPLETED: RunStatus.COMPLETED,
    pb.RUN_STATUS_DIVERGED: RunStatus.DIVERGED,
    pb.RUN_STATUS_FAILED: RunStatus.FAILED,
}
_STATUS_TO_PROTO = {v: k for k, v in _STATUS_TO_DOMAIN.items()}


def _optional(message, name: str):
    return getattr(message, name) if message.HasField(name) else None


def spec_from_proto(spec: pb.TrainingSpec, field: str = "spec") -> TrainingSpec:
    return resolve_spec(
        n_params=_optional(spec, "n_params"),
        n_active_params=_optional(spec, "n_active_params"),
        n_tokens=_optional(spec, "n_tokens"),
        compute_flops=_optional(spec, "compute_flops"),
        seq_len=_optional(spec, "seq_len"),
        architecture=spec.architecture or None,
        optimizer=spec.optimizer or None,
        weight_bits=_optional(spec, "weight_bits"),
        field_prefix=field,
    )


def spec_filter_from_proto(request: pb.ListRunsRequest) -> SpecFilter | None:
    """ListRuns' spec filter: None when unset; the spec resolved as in Recommend, comparing
    seq_len, architecture, optimizer and weight_bits only where given."""
    if not request.HasField("spec"):
        return None
    spec = request.spec
    given = frozenset(name for name in ("seq_len", "weight_bits") if spec.HasField(name)) | \
        frozenset(name for name in ("architecture", "optimizer") if getattr(spec, name))
    return SpecFilter.of(spec_from_proto(spec), given)


def spec_to_proto(spec: TrainingSpec) -> pb.TrainingSpec:
    return pb.TrainingSpec(
        n_params=spec.n_params, n_active_params=spec.n_active_params, n_tokens=spec.n_tokens,
        compute_flops=spec.compute_flops, seq_len=spec.seq_len,
        architecture=spec.architecture.value, optimizer=spec.optimizer.value,
        weight_bits=spec.weight_bits,
    )


def pins_from_proto(pins: pb.Pins) -> Pins:
    fields = {name: _optional(pins, name)
              for name in ("lr", "batch_size_tokens", "weight_decay", "qat_fraction")}
    return validated(Pins, fields, "pins")


def report_from_proto(request: pb.ReportRunRequest) -> RunReport:
    if not request.HasField("spec"):
        raise InvalidArgument.single("spec", "required")
    spec = spec_from_proto(request.spec)
    if request.outcome.status not in _STATUS_TO_DOMAIN:
        raise InvalidArgument.single(
            "outcome.status", "required: RUN_STATUS_COMPLETED, RUN_STATUS_DIVERGED or RUN_STATUS_FAILED")
    hp = request.hyperparameters
    return validated(RunReport, {
        "run_id": request.run_id,
        "spec": spec,
        "hyperparameters": {
            "lr": hp.lr,
            "batch_size_tokens": hp.batch_size_tokens,
            "weight_decay": _optional(hp, "weight_decay"),
            "qat_fraction": _optional(hp, "qat_fraction") or 0.0,
        },
        "outcome": {"status": _STATUS_TO_DOMAIN[request.outcome.status],
                    "final_loss": _optional(request.outcome, "final_loss")},
        "metadata": dict(request.metadata),
        "recommendation_id": request.recommendation_id,
        "trial_id": request.trial_id,
    })


def run_to_proto(run: RunRecord) -> pb.Run:
    created = Timestamp()
    created.FromDatetime(run.created_at)
    hp = run.hyperparameters
    outcome = pb.RunOutcome(status=_STATUS_TO_PROTO[run.outcome.status])
    if run.outcome.final_loss is not None:
        outcome.final_loss = run.outcome.final_loss
    return pb.Run(
        run_id=run.run_id,
        spec=spec_to_proto(run.spec),
        hyperparameters=pb.Hyperparameters(lr=hp.lr, batch_size_tokens=hp.batch_size_tokens,
                                           weight_decay=hp.weight_decay, qat_fraction=hp.qat_fraction),
        outcome=outcome,
        metadata=run.metadata,
        recommendation_id=run.recommendation_id,
        trial_id=run.trial_id,
        source=run.source,
        created_at=created,
    )


def _interval(interval: Interval) -> pb.Interval:
    return pb.Interval(lo=interval.lo, hi=interval.hi)


def recommendation_to_proto(rec: Recommendation) -> pb.Recommendation:
    return pb.Recommendation(
        lr=rec.lr, lr_interval=_interval(rec.lr_interval),
        batch_size_tokens=rec.batch_size_tokens,
        batch_size_tokens_interval=_interval(rec.batch_size_tokens_interval),
        batch_size_sequences=rec.batch_size_sequences,
        weight_decay=rec.weight_decay, weight_decay_interval=_interval(rec.weight_decay_interval),
        qat_fraction=rec.qat_fraction, qat_fraction_interval=_interval(rec.qat_fraction_interval),
        predicted_loss=rec.predicted_loss,
        predicted_loss_interval=_interval(rec.predicted_loss_interval),
        sources=[pb.Source(field=s.field, name=s.name, version=s.version, detail=s.detail)
                 for s in rec.sources],
        warnings=rec.warnings,
        recommendation_id=rec.recommendation_id,
        spec=spec_to_proto(rec.spec),
        model_versions=rec.model_versions,
        trial_id=rec.trial_id,
    )


MAX_PREDICT_POINTS = 10_000


def points_from_proto(request: pb.PredictLossRequest, spec: TrainingSpec) -> dict[str, np.ndarray]:
    """The points' hyperparameters as arrays (NaN where optional and unset), checked in bulk."""
    points = request.points
    if not 1 <= len(points) <= MAX_PREDICT_POINTS:
        raise InvalidArgument.single("points", f"give 1 to {MAX_PREDICT_POINTS} points, got {len(points)}")
    given = {name: np.array([p.HasField(name) for p in points], bool)
             for name in ("weight_decay", "qat_fraction")}
    arrays = {
        "lr": np.array([p.lr for p in points]),
        "batch_size_tokens": np.array([p.batch_size_tokens for p in points]),
        "weight_decay": np.array([p.weight_decay if p.HasField("weight_decay") else np.nan for p in points]),
        "qat_fraction": np.array([p.qat_fraction if p.HasField("qat_fraction") else np.nan for p in points]),
    }
    # NaN marks an optional value unset; one sent as NaN is refused (it was taken for unset).
    with np.errstate(invalid="ignore"):
        checks = (
            ("lr", ~((arrays["lr"] >= MIN_LR) & (arrays["lr"] <= MAX_LR)),
             f"must be in [{MIN_LR:g}, {MAX_LR:g}]"),
            ("batch_size_tokens", ~((arrays["batch_size_tokens"] >= spec.seq_len)
                                    & (arrays["batch_size_tokens"] <= spec.n_tokens)),
             f"must be at least one sequence (spec.seq_len {spec.seq_len}) and at most "
             "spec.n_tokens"),
            ("weight_decay", given["weight_decay"]
             & ~((arrays["weight_decay"] >= 0) & (arrays["weight_decay"] <= MAX_WEIGHT_DECAY)),
             f"must be in [0, {MAX_WEIGHT_DECAY:g}]"),
            ("qat_fraction", given["qat_fraction"]
             & ~((arrays["qat_fraction"] >= 0) & (arrays["qat_fraction"] <= 1)
                 & (spec.quantized | (arrays["qat_fraction"] == 0))),
             "must be in [0, 1], and 0 when spec.weight_bits is 16"),
        )
    # float(): a numpy scalar's repr is "np.float64(0.0)", not the number the caller sent. lr
    # and batch are required, and 0 is what an unset one arrives as.
    violations = [FieldViolation(f"points[{i}].{name}",
                                 "required" if name in ("lr", "batch_size_tokens")
                                 and arrays[name][i] == 0 else
                                 f"{reason} (got {float(arrays[name][i])!r})")
                  for name, bad, reason in checks for i in np.flatnonzero(bad)[:5]]
    if violations:
        raise InvalidArgument(violations)
    return arrays


def predictions_to_proto(queries, prediction, versions) -> pb.PredictLossResponse:
    return pb.PredictLossResponse(
        predictions=[pb.LossPrediction(
            hyperparameters=pb.Hyperparameters(
                lr=queries.lr[i], batch_size_tokens=queries.batch_size_tokens[i],
                weight_decay=queries.weight_decay[i], qat_fraction=queries.qat_fraction[i]),
            loss=prediction.mean[i],
            loss_interval=pb.Interval(lo=prediction.lo[i], hi=prediction.hi[i]),
        ) for i in range(len(queries))],
        model_versions=versions,
    )


_TRIAL_STATE_TO_PROTO = {
    "running": pb.TRIAL_STATE_RUNNING,
    "reported": pb.TRIAL_STATE_REPORTED,
    "timed_out": pb.TRIAL_STATE_TIMED_OUT,
    "superseded": pb.TRIAL_STATE_SUPERSEDED,
    "closed": pb.TRIAL_STATE_CLOSED,
}


def trial_status_to_proto(status: TrialStatus) -> pb.HeartbeatResponse:
    response = pb.HeartbeatResponse(state=_TRIAL_STATE_TO_PROTO[status.state],
                                    detail=status.detail, run_id=status.run_id)
    if status.heartbeat_at is not None:
        response.heartbeat_at.FromDatetime(status.heartbeat_at)
    if status.expires_at is not None:
        response.expires_at.FromDatetime(status.expires_at)
    return response
