"""The run record (spec, hyperparameters, outcome), defined once and used everywhere.

Validation lives here so that every entry point (gRPC, importers, CLI) rejects the same inputs
with the same field names. Bounds are plausibility limits, not physics: they catch unit
mistakes (tokens given in billions, lr given in percent) before they reach the store.
"""

import math
import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator

from benchmark_db.errors import FieldViolation, InvalidArgument

DEFAULT_SEQ_LEN = 2048
NO_QUANTIZATION_BITS = 16
FLOPS_PER_PARAM_TOKEN = 6.0  # C = 6 * N_active * D
# Two of params/tokens/compute given with the third too must agree to this relative tolerance.
COMPUTE_TOLERANCE = 0.02

Finite = Annotated[float, Field(allow_inf_nan=False)]
# A learning rate below this trains nothing in any budget the service covers; smaller ones
# underflow the AdamW timescale B / (lr wd D) to infinities in the models.
MIN_LR = 1e-10
MAX_LR, MAX_WEIGHT_DECAY, MAX_BATCH_TOKENS = 10.0, 100.0, 1e12
# A batch's sequences travel as an int32 (RecommendResponse.batch_size_sequences).
MAX_BATCH_SEQUENCES = 2**31 - 1
# The validation context of rows read back from the database: bounds added after a row may
# have been stored (MIN_LR, MIN_COMPLETED_LOSS, QAT without quantization) do not apply, so
# older rows still load.
STORED = {"stored": True}


def _new_input(info: ValidationInfo) -> bool:
    return not (info.context or {}).get("stored")


def _check_min_lr(lr: float | None, info: ValidationInfo) -> None:
    if lr is not None and lr < MIN_LR and _new_input(info):
        raise ValueError(f"lr: must be at least {MIN_LR:g} (got {lr:g})")


class Architecture(StrEnum):
    DENSE = "dense"
    MOE = "moe"


class Optimizer(StrEnum):
    ADAMW = "adamw"


class RunStatus(StrEnum):
    COMPLETED = "completed"
    DIVERGED = "diverged"
    FAILED = "failed"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TrainingSpec(_Model):
    """A fully resolved spec: all sizes known, defaults filled in."""

    n_params: Finite = Field(ge=1e3, le=1e14)
    n_active_params: Finite = Field(ge=1e3, le=1e14)
    n_tokens: Finite = Field(ge=1e3, le=1e17)
    seq_len: int = Field(default=DEFAULT_SEQ_LEN, ge=1, le=1 << 24)
    architecture: Architecture = Architecture.DENSE
    optimizer: Optimizer = Optimizer.ADAMW
    weight_bits: int = Field(default=NO_QUANTIZATION_BITS, ge=1, le=32)

    @model_validator(mode="after")
    def _active_within_total(self, info: ValidationInfo) -> "TrainingSpec":
        if self.n_active_params > self.n_params * (1 + 1e-9):
            raise ValueError("n_active_params: must not exceed n_params")
        if (self.architecture is Architecture.DENSE and _new_input(info)
                and self.n_active_params < self.n_params * (1 - 1e-9)):
            raise ValueError("n_active_params: below n_params, which only a mixture of experts "
                             "has (architecture moe); a dense model's parameters are all active")
        if self.n_tokens < self.seq_len and _new_input(info):
            raise ValueError(f"n_tokens: fewer than one sequence of seq_len {self.seq_len} tokens")
        return self

    def feasible(self) -> dict[str, tuple[float, float]]:
        """The range of each hyperparameter a run of this spec can report: what the service
        recommends within. A batch is whole sequences, at most the training tokens and
        MAX_BATCH_SEQUENCES."""
        seq = self.seq_len
        most = min(self.n_tokens, MAX_BATCH_TOKENS, seq * MAX_BATCH_SEQUENCES)
        return {"lr": (MIN_LR, MAX_LR),
                "batch_size_tokens": (float(seq), float(max(1, math.floor(most / seq)) * seq)),
                "weight_decay": (0.0, MAX_WEIGHT_DECAY),
                "qat_fraction": (0.0, 1.0 if self.quantized else 0.0)}

    @property
    def compute_flops(self) -> float:
        return FLOPS_PER_PARAM_TOKEN * self.n_active_params * self.n_tokens

    @property
    def quantized(self) -> bool:
        return self.weight_bits < NO_QUANTIZATION_BITS

    @property
    def tokens_per_param(self) -> float:
        return self.n_tokens / self.n_active_params

    @classmethod
    def of_sizes(cls, n_params: float, n_active_params: float, n_tokens: float, seq_len: int,
                 weight_bits: int) -> "TrainingSpec":
        """The spec of stored runs' sizes. Run tables keep no architecture: fewer active
        parameters than parameters is a mixture of experts."""
        moe = n_active_params < n_params * (1 - 1e-9)
        return cls(n_params=n_params, n_active_params=n_active_params, n_tokens=n_tokens,
                   seq_len=int(seq_len), weight_bits=int(weight_bits),
                   architecture=Architecture.MOE if moe else Architecture.DENSE)


class Hyperparameters(_Model):
    lr: Finite = Field(gt=0, le=MAX_LR)
    batch_size_tokens: Finite = Field(ge=1, le=MAX_BATCH_TOKENS)
    weight_decay: Finite = Field(ge=0, le=MAX_WEIGHT_DECAY)
    qat_fraction: Finite = Field(default=0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _lr_trains(self, info: ValidationInfo) -> "Hyperparameters":
        _check_min_lr(self.lr, info)
        return self


class Pins(_Model):
    """Hyperparameters fixed by the caller; None means free."""

    lr: Finite | None = Field(default=None, gt=0, le=MAX_LR)
    batch_size_tokens: Finite | None = Field(default=None, ge=1, le=MAX_BATCH_TOKENS)
    weight_decay: Finite | None = Field(default=None, ge=0, le=MAX_WEIGHT_DECAY)
    qat_fraction: Finite | None = Field(default=None, ge=0, le=1)

    @model_validator(mode="after")
    def _lr_trains(self, info: ValidationInfo) -> "Pins":
        _check_min_lr(self.lr, info)
        return self


# A run is of a spec (ListRuns' filter) when its sizes are within this relative distance of the
# spec's: equal up to float noise, as clients/plot.py same_spec compares them (not the 2% size
# bins of the study key, predictor/study.py: specs in one bin may still differ by 2%).
SPEC_MATCH_TOLERANCE = 1e-6
_SPEC_EXACT_FIELDS = ("seq_len", "architecture", "optimizer", "weight_bits")


class SpecFilter(_Model):
    """The runs of a spec: n_params, n_active_params and n_tokens within SPEC_MATCH_TOLERANCE
    of the resolved spec's; seq_len, architecture, optimizer and weight_bits equal where given
    (None matches any)."""

    n_params: float
    n_active_params: float
    n_tokens: float
    seq_len: int | None = None
    architecture: Architecture | None = None
    optimizer: Optimizer | None = None
    weight_bits: int | None = None

    @classmethod
    def of(cls, spec: TrainingSpec, given: frozenset[str] = frozenset(_SPEC_EXACT_FIELDS)
           ) -> "SpecFilter":
        """The filter of a resolved spec, comparing only the `given` of seq_len, architecture,
        optimizer and weight_bits (default all: the runs of exactly this spec)."""
        return cls(n_params=spec.n_params, n_active_params=spec.n_active_params,
                   n_tokens=spec.n_tokens,
                   **{name: getattr(spec, name) for name in _SPEC_EXACT_FIELDS if name in given})

    @staticmethod
    def size_range(value: float) -> tuple[float, float]:
        """The sizes y with |y - value| <= SPEC_MATCH_TOLERANCE * max(y, value)."""
        return value * (1 - SPEC_MATCH_TOLERANCE), value / (1 - SPEC_MATCH_TOLERANCE)

    def exact(self) -> dict[str, Any]:
        """The fields compared for equality, as stored (enum values as strings)."""
        out = {}
        for name in _SPEC_EXACT_FIELDS:
            value = getattr(self, name)
            if value is not None:
                out[name] = value.value if isinstance(value, StrEnum) else value
        return out

    def matches(self, spec: TrainingSpec) -> bool:
        for name in ("n_params", "n_active_params", "n_tokens"):
            lo, hi = self.size_range(getattr(self, name))
            if not lo <= getattr(spec, name) <= hi:
                return False
        stored = SpecFilter.of(spec).exact()
        return all(stored[name] == value for name, value in self.exact().items())


# A completed run's loss in nats per token is far below MAX and far above MIN (text's entropy is
# about one nat per token); a diverged one may be anything. A loss below MIN is a wrong unit or
# a bug, and would become its group's loss level in every model fitted on it.
MAX_COMPLETED_LOSS = 1e3
MIN_COMPLETED_LOSS = 1e-2


class RunOutcome(_Model):
    status: RunStatus
    final_loss: Finite | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _completed_has_plausible_loss(self, info: ValidationInfo) -> "RunOutcome":
        if self.status is RunStatus.COMPLETED:
            if self.final_loss is None:
                raise ValueError("final_loss: required when the run completed")
            if self.final_loss > MAX_COMPLETED_LOSS:
                raise ValueError(f"final_loss: {self.final_loss:g} nats is not a completed run's "
                                 "loss; report it as diverged")
            if self.final_loss < MIN_COMPLETED_LOSS and _new_input(info):
                raise ValueError(f"final_loss: {self.final_loss:g} nats is below any language "
                                 f"model's loss (at least {MIN_COMPLETED_LOSS:g}); report the mean "
                                 "cross-entropy in nats per token")
        return self


MAX_METADATA_ENTRIES = 64
MAX_METADATA_KEY_BYTES = 256
MAX_METADATA_VALUE_BYTES = 4096
MAX_ID_LENGTH = 200
TENANT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
RUN_ID_PATTERN = re.compile(r"^[^\x00-\x1f]+$")  # any text without control characters
# PostgreSQL text cannot hold a NUL (SQLite stores one, in a run that then cannot move to
# PostgreSQL). A report's other ids hold no control character at all, as run_id; its labels may
# hold tabs and newlines (a command line, a note), not a NUL.
CONTROL_CHARACTER = re.compile(r"[\x00-\x1f]")


def check_tenant(tenant: str) -> str:
    # fullmatch: with match, "$" also matches before a final newline ("team\n" passed).
    if not TENANT_PATTERN.fullmatch(tenant):
        raise InvalidArgument.single("tenant", "1-100 letters, digits, '.', '_' or '-', "
                                               "starting with a letter or digit")
    return tenant


def check_run_id(run_id: str) -> str:
    """A run_id given outside a report (an explore's, GetRun's), held to the report's rules."""
    # fullmatch: with match, "$" also matches before a final newline, which the report's
    # pattern (pydantic's regex engine) refuses.
    if len(run_id) > MAX_ID_LENGTH or not RUN_ID_PATTERN.fullmatch(run_id):
        raise InvalidArgument.single("run_id", f"1-{MAX_ID_LENGTH} characters, none of them a "
                                               "control character")
    return run_id


class RunReport(_Model):
    """A run as a client reports it (or an importer reads it)."""

    run_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=RUN_ID_PATTERN.pattern)
    spec: TrainingSpec
    hyperparameters: Hyperparameters
    outcome: RunOutcome
    metadata: dict[str, str] = Field(default_factory=dict, max_length=MAX_METADATA_ENTRIES)
    recommendation_id: str = Field(default="", max_length=MAX_ID_LENGTH)
    trial_id: str = Field(default="", max_length=MAX_ID_LENGTH)
    source: str = "report"

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> "RunReport":
        if self.hyperparameters.batch_size_tokens > self.spec.n_tokens:
            raise ValueError(
                "hyperparameters.batch_size_tokens: larger than the run's n_tokens "
                f"({self.hyperparameters.batch_size_tokens:g} > {self.spec.n_tokens:g})"
            )
        # As for Pins; runs stored before this rule may break it.
        if self.hyperparameters.batch_size_tokens < self.spec.seq_len and _new_input(info):
            raise ValueError(
                "hyperparameters.batch_size_tokens: less than one sequence of seq_len "
                f"{self.spec.seq_len} ({self.hyperparameters.batch_size_tokens:g} tokens)")
        # As for Pins and PredictLoss points; runs stored before this rule may break it.
        if self.hyperparameters.qat_fraction and not self.spec.quantized and _new_input(info):
            raise ValueError(
                "hyperparameters.qat_fraction: must be 0 or unset when spec.weight_bits is "
                f"{self.spec.weight_bits} (no quantization)"
            )
        for key, value in self.metadata.items():
            if not key or len(key.encode()) > MAX_METADATA_KEY_BYTES:
                raise ValueError(f"metadata: key must be 1-{MAX_METADATA_KEY_BYTES} bytes")
            if len(value.encode()) > MAX_METADATA_VALUE_BYTES:
                raise ValueError(f"metadata[{key!r}]: value over {MAX_METADATA_VALUE_BYTES} bytes")
        return self

    @model_validator(mode="after")
    def _storable_text(self, info: ValidationInfo) -> "RunReport":
        if not _new_input(info):  # runs SQLite stored before this rule still load
            return self
        for name in ("recommendation_id", "trial_id"):
            if CONTROL_CHARACTER.search(value := getattr(self, name)):
                raise ValueError(f"{name}: at most {MAX_ID_LENGTH} characters, none of them a "
                                 f"control character (got {_preview(value)})")
        for key, value in self.metadata.items():
            if "\x00" in key:
                raise ValueError(f"metadata: key {_preview(key)} contains a NUL character, "
                                 "which the database cannot store")
            if "\x00" in value:
                raise ValueError(f"metadata[{key!r}]: value contains a NUL character, which the "
                                 "database cannot store")
        return self


class RunRecord(RunReport):
    """A stored run."""

    tenant: str
    created_at: datetime

    def differs_from(self, report: RunReport) -> list[str]:
        """The fields (e.g. "spec.n_params") in which a report of this run_id says something
        else than the stored run: a retry of the same report says the same; a new run under a
        reused run_id does not. Metadata may change between retries (timestamps) and is not
        compared."""
        return [f"{part}.{name}"
                for part in ("spec", "hyperparameters", "outcome")
                for name, value in getattr(self, part).model_dump().items()
                if getattr(getattr(report, part), name) != value]


def resolve_spec(
    *,
    n_params: float | None = None,
    n_active_params: float | None = None,
    n_tokens: float | None = None,
    compute_flops: float | None = None,
    seq_len: int | None = None,
    architecture: str | None = None,
    optimizer: str | None = None,
    weight_bits: int | None = None,
    field_prefix: str = "spec",
) -> TrainingSpec:
    """Builds a TrainingSpec from any two of params / tokens / compute (C = 6 N_active D)."""
    where = f"{field_prefix}." if field_prefix else ""
    # Any case, as the importers take them: "MoE" and "AdamW" are how people write them.
    architecture, optimizer = (v.lower() if isinstance(v, str) else v
                               for v in (architecture, optimizer))
    for name, value in (("n_params", n_params), ("n_active_params", n_active_params),
                        ("n_tokens", n_tokens), ("compute_flops", compute_flops)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise InvalidArgument.single(where + name, f"must be a positive finite number, got {value}")
    if compute_flops is not None:
        active = n_active_params if n_active_params is not None else n_params
        if active is not None and n_tokens is None:
            n_tokens = compute_flops / (FLOPS_PER_PARAM_TOKEN * active)
        elif active is None and n_tokens is not None:
            n_params = compute_flops / (FLOPS_PER_PARAM_TOKEN * n_tokens)
        elif active is not None and n_tokens is not None:
            implied = FLOPS_PER_PARAM_TOKEN * active * n_tokens
            if abs(implied / compute_flops - 1) > COMPUTE_TOLERANCE:
                raise InvalidArgument.single(
                    where + "compute_flops",
                    f"{compute_flops:.3g} disagrees with 6 * n_active_params * n_tokens = {implied:.3g}",
                )
    if n_params is None and n_active_params is not None:
        if architecture != "dense":  # active parameters alone say mixture of experts: of what?
            raise InvalidArgument.single(
                where + "n_params", "required with n_active_params: the mixture of experts' "
                                    "total parameters (for a dense model give n_params alone)")
        n_params = n_active_params
    if (architecture in (None, "") and None not in (n_params, n_active_params)
            and n_active_params < n_params * (1 - 1e-9)):
        architecture = "moe"  # fewer active parameters than parameters: what else could it be
    if n_params is None or n_tokens is None:
        missing = "n_params" if n_params is None else "n_tokens"
        raise InvalidArgument.single(
            where + missing, "required: give two of n_params, n_tokens and compute_flops"
        )
    fields: dict[str, Any] = {
        "n_params": n_params,
        "n_active_params": n_active_params if n_active_params is not None else n_params,
        "n_tokens": n_tokens,
    }
    for name, value in (("seq_len", seq_len), ("architecture", architecture),
                        ("optimizer", optimizer), ("weight_bits", weight_bits)):
        if value not in (None, ""):
            fields[name] = value
    try:
        return validated(TrainingSpec, fields, field_prefix)
    except InvalidArgument as exc:
        if n_active_params is None:  # defaulted from n_params: report n_params alone
            raise InvalidArgument([v for v in exc.violations
                                   if not v.field.endswith("n_active_params")]) from None
        raise


def validated(model: type[BaseModel], data: dict[str, Any], field_prefix: str = ""):
    """model(**data), with pydantic errors turned into InvalidArgument field violations."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidArgument(_violations(exc, field_prefix)) from None


def _preview(value: Any, limit: int = 80) -> str:
    """The rejected input as quoted in an error, cut short: an error echoing a megabyte string
    would not even fit in the gRPC trailers that carry it."""
    shown = repr(value)
    return shown if len(shown) <= limit else f"{shown[:limit]}... ({len(shown)} characters)"


_NAMED_FIELD = re.compile(r"^([A-Za-z_][\w.]*(?:\[[^\]]*\])?): (.*)$", re.S)


def _violations(exc: ValidationError, field_prefix: str) -> list[FieldViolation]:
    violations = []
    for err in exc.errors():
        path = [str(p) for p in err["loc"]]
        reason = err["msg"].removeprefix("Value error, ")
        # Model validators name the field they reject, relative to their model: "field: reason".
        named = _NAMED_FIELD.match(reason)
        if err["type"] == "value_error" and named:
            path.append(named.group(1))
            reason = named.group(2)
        elif err["type"] != "missing" and not isinstance(err.get("input"), dict):
            reason = f"{reason} (got {_preview(err['input'])})"
        full = ".".join(p for p in [field_prefix, *path] if p)
        violations.append(FieldViolation(full or "request", reason))
    return violations
