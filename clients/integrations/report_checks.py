"""What the service checks in a run's report, checked when the run starts.

A report the service refuses is found only at the end of training: hours of a run whose record
is then saved for a `send-unsent` that refuses it too. So the input a run is given (its
hyperparameters, its fallback, its metadata, its run_id) is checked against the same rules when
the run is created, and bad input fails there, before any training, with the service's error
type (InvalidArgumentError) and field names. What only the end can tell (the final loss) is
handled where the run is reported (tracking.py).

The limits are the service's (benchmark_db/records.py, which the client does not import);
tests/unit/test_report_checks.py keeps them equal.
"""

import math
import re
from collections.abc import Iterable

from clients.errors import InvalidArgumentError
from clients.models import (MAX_METADATA_ENTRIES, MAX_METADATA_KEY_BYTES,
                            MAX_METADATA_VALUE_BYTES, Hyperparameters, TrainingSpec)

MIN_LR = 1e-10
MAX_LR, MAX_WEIGHT_DECAY, MAX_BATCH_TOKENS = 10.0, 100.0, 1e12
# A completed run's loss in nats per token is below this; a larger one is a divergence.
MAX_COMPLETED_LOSS = 1e3
MAX_ID_LENGTH = 200
RUN_ID_PATTERN = re.compile(r"^[^\x00-\x1f]+$")  # any text without control characters
DEFAULT_SEQ_LEN = 2048  # the spec's seq_len when not given
NO_QUANTIZATION_BITS = 16  # the spec's weight_bits when not given

# The metadata labels an integration adds to the run's own (tracking.py).
ADDED_LABELS = ("integration", "steps_logged", "final_loss")

Violations = list[tuple[str, str]]


def raise_if(violations: Violations) -> None:
    if violations:
        raise InvalidArgumentError("; ".join(f"{f}: {d}" for f, d in violations), violations)


def run_id_violations(run_id: str) -> Violations:
    if not isinstance(run_id, str) or not (0 < len(run_id) <= MAX_ID_LENGTH
                                           and RUN_ID_PATTERN.fullmatch(run_id)):
        return [("run_id", f"1-{MAX_ID_LENGTH} characters, none of them a control character "
                           f"(got {run_id!r:.80})")]
    return []


def metadata_violations(metadata, added: Iterable[str] = ADDED_LABELS) -> Violations:
    """The service's rules for a report's metadata (text labels, at most MAX_METADATA_ENTRIES
    of them, keys and values of bounded size), counting the labels `added` to the run's own."""
    if not isinstance(metadata, dict):
        return [("metadata", f"a dict of text labels (got {type(metadata).__name__})")]
    out = []
    for key, value in metadata.items():
        if not isinstance(key, str):
            out.append(("metadata", f"keys must be text (got {key!r:.80})"))
        elif not isinstance(value, str):
            out.append((f"metadata.{key}", f"must be text (got {type(value).__name__} "
                                           f"{value!r:.80}): pass str(value)"))
        elif not key or len(key.encode()) > MAX_METADATA_KEY_BYTES:
            out.append(("metadata", f"key must be 1-{MAX_METADATA_KEY_BYTES} bytes"))
        elif len(value.encode()) > MAX_METADATA_VALUE_BYTES:
            out.append((f"metadata.{key}", f"value over {MAX_METADATA_VALUE_BYTES} bytes"))
        elif "\x00" in key:  # the service's database (PostgreSQL text) cannot store a NUL
            out.append(("metadata", f"key {key!r:.80} contains a NUL character"))
        elif "\x00" in value:
            out.append((f"metadata.{key}", "contains a NUL character"))
    added = set(added)
    total = len(set(metadata) | added)
    if total > MAX_METADATA_ENTRIES:
        own = MAX_METADATA_ENTRIES - len(added)
        out.append(("metadata", f"at most {own} labels of your own: a run keeps at most "
                                f"{MAX_METADATA_ENTRIES} and the integration adds "
                                f"{', '.join(sorted(added))} (got {len(set(metadata) - added)})"))
    return out


def hyperparameter_violations(hp: Hyperparameters, spec: TrainingSpec, field: str = "",
                              only: Iterable[str] | None = None) -> Violations:
    """The service's rules for a report's hyperparameters (named `field`.x): all of them (a
    report needs lr, batch_size_tokens and weight_decay), or those of the fields `only`. The
    rules that need the spec apply where it gives the size they need (seq_len, n_tokens,
    weight_bits)."""
    out = []
    prefix = f"{field}." if field else ""

    def bad(name: str, rule: str) -> None:
        out.append((prefix + name, f"{rule} (got {getattr(hp, name)!r})"))

    given = set(only) if only is not None else {"lr", "batch_size_tokens", "weight_decay",
                                                "qat_fraction"}
    complete = only is None
    if "lr" in given and not (math.isfinite(hp.lr) and MIN_LR <= hp.lr <= MAX_LR):
        bad("lr", f"must be in [{MIN_LR:g}, {MAX_LR:g}]")
    if "batch_size_tokens" in given:
        batch = hp.batch_size_tokens
        if not (math.isfinite(batch) and 1 <= batch <= MAX_BATCH_TOKENS):
            bad("batch_size_tokens", f"must be in [1, {MAX_BATCH_TOKENS:g}] tokens")
        elif spec.seq_len is not None and batch < spec.seq_len:
            bad("batch_size_tokens", f"less than one sequence of the spec's seq_len {spec.seq_len}")
        elif spec.n_tokens is not None and batch > spec.n_tokens:
            bad("batch_size_tokens", f"larger than the spec's n_tokens {spec.n_tokens:g}")
    if "weight_decay" in given:
        if hp.weight_decay is None:
            if complete:
                out.append((prefix + "weight_decay", "required: a run is reported with the "
                                                     "weight decay it trained with (0 for none)"))
        elif not (math.isfinite(hp.weight_decay) and 0 <= hp.weight_decay <= MAX_WEIGHT_DECAY):
            bad("weight_decay", f"must be in [0, {MAX_WEIGHT_DECAY:g}]")
    if "qat_fraction" in given and hp.qat_fraction is not None:
        if not (math.isfinite(hp.qat_fraction) and 0 <= hp.qat_fraction <= 1):
            bad("qat_fraction", "must be in [0, 1]")
        elif hp.qat_fraction and (spec.weight_bits or NO_QUANTIZATION_BITS) >= NO_QUANTIZATION_BITS:
            bad("qat_fraction", f"must be 0 or unset when the spec's weight_bits is "
                                f"{spec.weight_bits or NO_QUANTIZATION_BITS} (no quantization)")
    return out
