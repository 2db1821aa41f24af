"""What a recommender returns, independent of how it was produced."""

import uuid

from pydantic import BaseModel, ConfigDict, Field

from benchmark_db.records import TrainingSpec

HYPERPARAMETERS = ("lr", "batch_size_tokens", "weight_decay", "qat_fraction")


class Interval(BaseModel):
    model_config = ConfigDict(frozen=True)
    lo: float
    hi: float

    @classmethod
    def point(cls, value: float) -> "Interval":
        return cls(lo=value, hi=value)

    def hull(self, other: "Interval") -> "Interval":
        return Interval(lo=min(self.lo, other.lo), hi=max(self.hi, other.hi))


class Source(BaseModel):
    model_config = ConfigDict(frozen=True)
    field: str
    name: str
    version: str
    detail: str = ""


class Recommendation(BaseModel):
    model_config = ConfigDict(frozen=True)

    spec: TrainingSpec
    lr: float
    lr_interval: Interval
    batch_size_tokens: float
    batch_size_tokens_interval: Interval
    weight_decay: float
    weight_decay_interval: Interval
    qat_fraction: float
    qat_fraction_interval: Interval
    predicted_loss: float
    predicted_loss_interval: Interval
    sources: tuple[Source, ...]
    warnings: tuple[str, ...] = ()
    model_versions: tuple[str, ...] = ()
    trial_id: str = ""  # set in explore mode: the trial to report the run against
    recommendation_id: str = Field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def batch_size_sequences(self) -> int:
        return round(self.batch_size_tokens / self.spec.seq_len)


def whole_sequences(batch_size_tokens: float, seq_len: int) -> float:
    """A batch in tokens rounded to a whole number (at least one) of sequences."""
    return float(max(1, round(batch_size_tokens / seq_len)) * seq_len)


def within_feasible(rec: Recommendation) -> Recommendation:
    """rec with each value and interval inside what a run of its spec can report
    (TrainingSpec.feasible), and a warning for each value moved: the laws extrapolated to tiny
    or huge specs can ask for a weight decay above 100 or a batch above the training tokens."""
    changes, warnings = {}, list(rec.warnings)
    for name, (lo, hi) in rec.spec.feasible().items():
        value, interval = getattr(rec, name), getattr(rec, f"{name}_interval")
        kept = min(max(value, lo), hi)
        clipped = Interval(lo=min(max(interval.lo, lo), kept), hi=max(min(interval.hi, hi), kept))
        if kept != value:
            warnings.append(f"{name}: the models ask for {value:g}, outside what a run of this "
                            f"spec can use ({lo:g} to {hi:g}); {kept:g} is recommended instead")
        if kept != value or clipped != interval:
            changes |= {name: kept, f"{name}_interval": clipped}
    if not changes:
        return rec
    return rec.model_copy(update=changes | {"warnings": tuple(warnings)})
