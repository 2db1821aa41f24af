"""The client's typed view of the API: one pydantic model per proto message it sends or returns.

Field names are the proto field names, so `model_dump()` reads like the proto's JSON; unset
optional proto fields are None. The models check types only: the service validates values and
answers bad input with field violations (InvalidArgumentError). Sizes accept human units
(TrainingSpec(n_params="1.3B", n_tokens="100B")).

clients/convert.py maps these to and from the generated messages; a test fails when a proto
field has no model field here.
"""

import math
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from clients.units import format_quantity, parse_quantity


def _quantity(value):
    return parse_quantity(value) if isinstance(value, str) else value


# A size: a number, or a string in human units ("1.3B", "1M", "2.5e21").
Quantity = Annotated[float, BeforeValidator(_quantity)]


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Mode(StrEnum):
    UNSPECIFIED = "unspecified"  # same as exploit
    EXPLOIT = "exploit"  # the best predicted configuration
    EXPLORE = "explore"  # the most informative next trial


class TrialState(StrEnum):
    """Where an explore trial stands (HeartbeatResponse.state)."""

    UNSPECIFIED = "unspecified"
    RUNNING = "running"  # not finished: the heartbeat was recorded
    REPORTED = "reported"  # closed by the run reported against it
    TIMED_OUT = "timed_out"  # closed by the time-out: a later report joins as the run's own
    SUPERSEDED = "superseded"  # closed by a run of other values or another spec
    CLOSED = "closed"  # finished some other way (by hand, through Optuna)


class RunStatus(StrEnum):
    UNSPECIFIED = "unspecified"
    COMPLETED = "completed"
    DIVERGED = "diverged"
    FAILED = "failed"


class TrainingSpec(_Message):
    """What is being trained: any two of n_params, n_tokens and compute_flops."""

    n_params: Quantity | None = None
    n_active_params: Quantity | None = None
    n_tokens: Quantity | None = None
    compute_flops: Quantity | None = None
    seq_len: int | None = None
    architecture: str = ""
    optimizer: str = ""
    weight_bits: int | None = None

    def describe(self) -> str:
        """'1.3B params, 100B tokens' (plus what differs from the defaults)."""
        parts = []
        if self.n_params is not None:
            parts.append(f"{format_quantity(self.n_params)} params")
        if self.n_active_params is not None and self.n_active_params != self.n_params:
            parts.append(f"{format_quantity(self.n_active_params)} active")
        if self.n_tokens is not None:
            parts.append(f"{format_quantity(self.n_tokens)} tokens")
        if self.compute_flops is not None:
            parts.append(f"{self.compute_flops:.3g} FLOPs")
        if self.weight_bits is not None and self.weight_bits < 16:
            parts.append(f"{self.weight_bits}-bit weights")
        if self.architecture and self.architecture != "dense":
            parts.append(self.architecture)
        return ", ".join(parts)


class Pins(_Message):
    """Hyperparameters fixed by the caller; None is free."""

    lr: float | None = None
    batch_size_tokens: Quantity | None = None
    weight_decay: float | None = None
    qat_fraction: float | None = None


class Interval(_Message):
    """A closed interval [lo, hi]."""

    lo: float = 0.0
    hi: float = 0.0

    def __contains__(self, value: float) -> bool:
        return self.lo <= value <= self.hi


class Source(_Message):
    """Which law or model produced a recommended value."""

    field: str = ""
    name: str = ""
    version: str = ""
    detail: str = ""


class Hyperparameters(_Message):
    """The hyperparameters a run used (weight_decay is required when reporting)."""

    lr: float = 0.0
    batch_size_tokens: Quantity = 0.0
    weight_decay: float | None = None
    qat_fraction: float | None = None


RECOMMENDED_FIELDS = ("lr", "batch_size_tokens", "weight_decay", "qat_fraction", "predicted_loss")


class Recommendation(_Message):
    lr: float = 0.0
    lr_interval: Interval = Interval()
    batch_size_tokens: float = 0.0
    batch_size_tokens_interval: Interval = Interval()
    batch_size_sequences: int = 0
    weight_decay: float = 0.0
    weight_decay_interval: Interval = Interval()
    qat_fraction: float = 0.0
    qat_fraction_interval: Interval = Interval()
    predicted_loss: float = 0.0
    predicted_loss_interval: Interval = Interval()
    sources: list[Source] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    recommendation_id: str = ""
    spec: TrainingSpec = TrainingSpec()
    model_versions: list[str] = Field(default_factory=list)
    trial_id: str = ""

    @property
    def hyperparameters(self) -> Hyperparameters:
        """The recommended values, ready to train with and to report back."""
        return Hyperparameters(lr=self.lr, batch_size_tokens=self.batch_size_tokens,
                               weight_decay=self.weight_decay, qat_fraction=self.qat_fraction)

    def interval(self, field: str) -> Interval:
        return getattr(self, f"{field}_interval")

    def sources_for(self, field: str) -> list[Source]:
        return [s for s in self.sources if s.field == field]


class RunOutcome(_Message):
    status: RunStatus = RunStatus.UNSPECIFIED
    final_loss: float | None = None

    @classmethod
    def completed(cls, final_loss: float) -> "RunOutcome":
        return cls(status=RunStatus.COMPLETED, final_loss=final_loss)

    @classmethod
    def diverged(cls, last_loss: float | None = None) -> "RunOutcome":
        """A run whose loss blew up; a finite last loss may be kept, NaN/inf are dropped."""
        finite = last_loss is not None and math.isfinite(last_loss)
        return cls(status=RunStatus.DIVERGED, final_loss=last_loss if finite else None)

    @classmethod
    def failed(cls) -> "RunOutcome":
        """Stopped for a reason unrelated to its hyperparameters (hardware, preemption)."""
        return cls(status=RunStatus.FAILED)


# The server's limits on a report's metadata (benchmark_db/records.py) and on PredictLoss's
# points (service/converters.py); a unit test keeps them equal. Known here so a report or a
# request over them is refused before it is sent: one far over them was refused by gRPC's
# message size limit, in an error that names no field.
MAX_METADATA_ENTRIES = 64
MAX_METADATA_KEY_BYTES = 256
MAX_METADATA_VALUE_BYTES = 4096
MAX_PREDICT_POINTS = 10_000


class RunReport(_Message):
    """A finished, diverged or failed run as the client reports it (ReportRunRequest). An
    empty run_id is replaced by a random one, chosen once so retries cannot duplicate the run."""

    run_id: str = ""
    spec: TrainingSpec
    hyperparameters: Hyperparameters
    outcome: RunOutcome
    metadata: dict[str, str] = Field(default_factory=dict, max_length=MAX_METADATA_ENTRIES)
    recommendation_id: str = ""
    trial_id: str = ""

    @field_validator("metadata")
    @classmethod
    def _metadata_within_limits(cls, metadata: dict[str, str]) -> dict[str, str]:
        for key, value in metadata.items():
            if not key or len(key.encode()) > MAX_METADATA_KEY_BYTES:
                raise ValueError(f"key {key[:40]!r} must be 1-{MAX_METADATA_KEY_BYTES} bytes")
            if len(value.encode()) > MAX_METADATA_VALUE_BYTES:
                raise ValueError(f"the value of {key!r} is over {MAX_METADATA_VALUE_BYTES} bytes")
        return metadata


class Run(_Message):
    """A stored run."""

    run_id: str = ""
    spec: TrainingSpec = TrainingSpec()
    hyperparameters: Hyperparameters = Hyperparameters()
    outcome: RunOutcome = RunOutcome()
    metadata: dict[str, str] = Field(default_factory=dict)
    recommendation_id: str = ""
    source: str = ""
    created_at: datetime | None = None
    trial_id: str = ""


class ReportResult(_Message):
    """ReportRunResponse: the stored run, False in `created` when run_id was already stored, and
    warnings (e.g. the trial reported against had been closed by another run)."""

    run: Run = Run()
    created: bool = False
    warnings: list[str] = Field(default_factory=list)
    # run_id was stored before with other values: the fields this report says otherwise (it was
    # not stored)
    differing_fields: list[str] = Field(default_factory=list)


class RunPage(_Message):
    """ListRunsResponse: runs newest first, the token of the next page (empty on the last), and
    whether the server filtered them by the request's spec."""

    runs: list[Run] = Field(default_factory=list)
    next_page_token: str = ""
    spec_filtered: bool = False


class LossPrediction(_Message):
    """The predicted final loss at one point (weight decay and QAT fraction filled in)."""

    hyperparameters: Hyperparameters = Hyperparameters()
    loss: float = 0.0
    loss_interval: Interval = Interval()


class LossPredictions(_Message):
    """PredictLossResponse: one prediction per point, in the order given."""

    predictions: list[LossPrediction] = Field(default_factory=list)
    model_versions: list[str] = Field(default_factory=list)


class HeartbeatResult(_Message):
    """HeartbeatResponse: the trial's state (RUNNING: the heartbeat was recorded; otherwise the
    trial had finished and nothing was), a line on it, the run that closed it, and while it runs
    when this heartbeat was recorded and when the trial times out without another (None: never)."""

    state: TrialState = TrialState.UNSPECIFIED
    detail: str = ""
    run_id: str = ""
    heartbeat_at: datetime | None = None
    expires_at: datetime | None = None

    @property
    def running(self) -> bool:
        return self.state is TrialState.RUNNING
