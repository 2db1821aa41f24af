"""Stored runs written in the generic import format (docs/import-format.md), so that
`hparamrec runs export` output re-imports cleanly with `hparamrec import --format csv|jsonl`.

Numbers are written in full (Python's shortest round-trip form), so a re-imported run has the
same values; the spec is written as n_params, n_active_params and n_tokens (compute_flops
follows from them). Where a run came from (`source`) and when it was stored are not part of
the format. A run's trial_id is written as it is; `hparamrec import` keeps it as the label
`imported_trial_id`, since a trial id names a trial of the database that issued it.
"""

import csv
import json
from collections.abc import Iterable
from typing import TextIO

from clients.models import Run

SPEC_COLUMNS = ("n_params", "n_active_params", "n_tokens", "seq_len", "architecture",
                "optimizer", "weight_bits")
HYPERPARAMETER_COLUMNS = ("lr", "batch_size_tokens", "weight_decay", "qat_fraction")
COLUMNS = ("run_id", *SPEC_COLUMNS, *HYPERPARAMETER_COLUMNS, "status", "final_loss",
           "recommendation_id", "trial_id")
CSV_METADATA_PREFIX = "metadata."
FORMATS = ("jsonl", "csv")


def record(run: Run) -> dict:
    """One run as the generic format's fields (None where not given), metadata as a dict."""
    values = {"run_id": run.run_id}
    values |= {name: getattr(run.spec, name) for name in SPEC_COLUMNS}
    values |= {name: getattr(run.hyperparameters, name) for name in HYPERPARAMETER_COLUMNS}
    values |= {"status": run.outcome.status.value, "final_loss": run.outcome.final_loss,
               "recommendation_id": run.recommendation_id or None,
               "trial_id": run.trial_id or None,
               "metadata": dict(sorted(run.metadata.items()))}
    return values


def write_jsonl(runs: Iterable[Run], out: TextIO) -> int:
    count = 0
    for run in runs:
        values = {k: v for k, v in record(run).items() if v is not None and v != {}}
        out.write(json.dumps(values, allow_nan=False) + "\n")
        count += 1
    return count


def write_csv(runs: Iterable[Run], out: TextIO) -> int:
    """The header needs every metadata key, so the runs are read before anything is written."""
    records = [record(run) for run in runs]
    keys = sorted({key for r in records for key in r["metadata"]})
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*COLUMNS, *(CSV_METADATA_PREFIX + key for key in keys)])
    for r in records:
        writer.writerow([_cell(r[name]) for name in COLUMNS]
                        + [r["metadata"].get(key, "") for key in keys])
    return len(records)


def _cell(value) -> str:
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)


WRITERS = {"jsonl": write_jsonl, "csv": write_csv}
