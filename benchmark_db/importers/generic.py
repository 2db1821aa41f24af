"""The generic import format (docs/import-format.md): one run per CSV row or JSONL line, with
columns named like the proto fields, so any team can export its runs to it."""

import difflib
import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path

from benchmark_db.errors import FieldViolation, InvalidArgument
from benchmark_db.importers.packed import PackedRuns
from benchmark_db.importers.rows import (DIVERGED_RATIO, HEADER_ROW, Progress, at_row, blew_up,
                                         boolean, content_id, counted, integer, number,
                                         read_csv, structure_errors_first, text_file)
from benchmark_db.importers.steplaw_csv import REQUIRED_COLUMNS as STEPLAW_COLUMNS
from benchmark_db.records import RunReport, RunStatus, resolve_spec, validated

_SPEC_NUMBERS = ("n_params", "n_active_params", "n_tokens", "compute_flops")
_SPEC_INTEGERS = ("seq_len", "weight_bits")
_SPEC_NAMES = ("architecture", "optimizer")
_HYPERPARAMETERS = ("lr", "batch_size_tokens", "weight_decay", "qat_fraction")
COLUMNS = frozenset({"run_id", *_SPEC_NUMBERS, *_SPEC_INTEGERS, *_SPEC_NAMES, *_HYPERPARAMETERS,
                     "final_loss", "status", "diverged", "metadata", "recommendation_id",
                     "trial_id"})
CSV_METADATA_PREFIX = "metadata."
_CSV_COLUMNS = (COLUMNS - {"metadata"}) | {CSV_METADATA_PREFIX + "KEY"}
# A trial id ("<study id>-<trial number>") names a trial of the database that issued it, and
# study ids start at 1 in every database: stored as the run's trial_id in another database, it
# would claim whatever trial has that id there (the refinement loop takes a run with a trial_id
# for that trial's, and a report re-sent with the run's run_id is told to it). So an imported
# trial_id is kept as this metadata label, and the run's trial_id stays empty: to the target's
# studies the run is one of the user's own configurations.
IMPORTED_TRIAL_KEY = "imported_trial_id"
# Validation needs some run_id; a row without one gets the hash of its validated content.
_PLACEHOLDER_ID = "pending"


def read_csv_runs(path: Path, progress: Progress | None = None) -> PackedRuns:
    header, rows = read_csv(path)  # rows are read as they are checked
    with structure_errors_first(rows):
        unknown = [c for c in header if not _is_csv_column(c)]
        if unknown:
            if set(STEPLAW_COLUMNS) <= set(header):  # one error, not one per column
                raise InvalidArgument.single(
                    f"row {HEADER_ROW}", "these are the Step Law sweep's columns: import it with "
                    "--format steplaw")
            raise _unknown_columns(HEADER_ROW, unknown, _CSV_COLUMNS)
        return _reports(((n, _csv_fields(cells)) for n, cells in rows), "import:csv", progress)


def read_jsonl_runs(path: Path, progress: Progress | None = None) -> PackedRuns:
    with text_file(path) as f:
        return _reports(_jsonl_fields(f), "import:jsonl", progress)


def _unknown_columns(row_number: int, names: list[str], known: Iterable[str]) -> InvalidArgument:
    """Names each unknown column, with the likely intended one: typos must not drop data."""
    violations = []
    for name in names:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else "see docs/import-format.md"
        violations.append(FieldViolation(f"row {row_number}: {name}", f"unknown column ({hint})"))
    return InvalidArgument(violations)


def _is_csv_column(name: str) -> bool:
    if name.startswith(CSV_METADATA_PREFIX):
        return len(name) > len(CSV_METADATA_PREFIX)
    return name in _CSV_COLUMNS


def _csv_fields(cells: dict[str, str]) -> dict:
    """Empty cells are absent values; metadata.KEY columns make the metadata map."""
    fields = {name: value.strip() for name, value in cells.items()
              if not name.startswith(CSV_METADATA_PREFIX) and value.strip()}
    fields["metadata"] = {name.removeprefix(CSV_METADATA_PREFIX): value
                          for name, value in cells.items()
                          if name.startswith(CSV_METADATA_PREFIX) and value}
    return fields


def _jsonl_fields(lines: Iterable[str]) -> Iterator[tuple[int, dict]]:
    for line_number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line, object_pairs_hook=_object_without_repeated_keys)
        except _RepeatedKey as exc:
            raise InvalidArgument.single(f"row {line_number}: {exc.key}",
                                         "key appears twice") from None
        except json.JSONDecodeError as exc:
            raise InvalidArgument.single(
                f"row {line_number}", f"not valid JSON: {exc.msg} at column {exc.colno}") from None
        except RecursionError:  # nested deeper than the parser goes: no run is
            raise InvalidArgument.single(f"row {line_number}", "not valid JSON: nested too "
                                         "deeply") from None
        if not isinstance(obj, dict):
            raise InvalidArgument.single(f"row {line_number}", "expected a JSON object")
        unknown = [key for key in obj if key not in COLUMNS]
        if unknown:
            raise _unknown_columns(line_number, unknown, COLUMNS)
        yield line_number, {key: value for key, value in obj.items() if value is not None}


class _RepeatedKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _object_without_repeated_keys(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object; a key given twice (the last would silently win) is an error."""
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise _RepeatedKey(key)
        obj[key] = value
    return obj


def _reports(rows: Iterable[tuple[int, dict]], source: str,
             progress: Progress | None) -> PackedRuns:
    """The rows' runs, validated, kept packed (packed.py) with whether the row gave a status:
    a run whose status the file leaves to its loss is diverged when the loss is far above its
    group's best (_far_above_the_best_diverged), known once every row is read."""
    best: dict[tuple, float] = {}
    reports = PackedRuns(finish=lambda report, status_given: _far_above_the_best_diverged(
        report, status_given, best))
    first_seen: dict[str, int] = {}  # run_id -> index of its first run
    for row_number, fields in counted(rows, progress):
        with at_row(row_number):
            report = _report(fields, source)
        index = reports.add(row_number, report, "status" in fields or "diverged" in fields)
        # The same row twice is harmless; one id for two runs is not.
        earlier = first_seen.setdefault(report.run_id, index)
        if not reports.same_run(earlier, index):
            raise InvalidArgument.single(
                f"row {row_number}: run_id", f"{report.run_id!r} is also the id of row "
                f"{reports.row_number(earlier)}, which has other values")
        if report.outcome.status is RunStatus.COMPLETED:
            key = _group(report)
            best[key] = min(best.get(key, math.inf), report.outcome.final_loss)
    return reports


def _far_above_the_best_diverged(report: RunReport, status_given: bool,
                                 best: dict[tuple, float]) -> RunReport:
    """The run as diverged if the file leaves its status to the loss and the loss is above
    DIVERGED_RATIO times its group's best completed loss (best, of the whole file): a run that
    blew up without reaching NaN. Ids were made before (a hashed id stays the same when other
    rows move the best)."""
    if (not status_given and report.outcome.status is RunStatus.COMPLETED
            and report.outcome.final_loss > DIVERGED_RATIO * best[_group(report)]):
        report = report.model_copy(update={"outcome": report.outcome.model_copy(
            update={"status": RunStatus.DIVERGED})})
    return report


def _group(report: RunReport) -> tuple[float, float, float]:
    return report.spec.n_params, report.spec.n_active_params, report.spec.n_tokens


def _report(fields: dict, source: str) -> RunReport:
    spec = resolve_spec(
        **{name: number(fields.get(name), name) for name in _SPEC_NUMBERS},
        **{name: integer(fields.get(name), name) for name in _SPEC_INTEGERS},
        **{name: _lower(fields.get(name)) for name in _SPEC_NAMES},
        field_prefix="",
    )
    hyperparameters = {name: number(fields[name], name)
                       for name in _HYPERPARAMETERS if name in fields}
    loss = number(fields.get("final_loss"), "final_loss")
    status = _status(fields.get("status"), boolean(fields.get("diverged"), "diverged"), loss)
    if loss is not None and not math.isfinite(loss) and status != RunStatus.COMPLETED:
        loss = None  # the record keeps finite losses only; the status says what happened
    report = validated(RunReport, {
        "run_id": fields.get("run_id", _PLACEHOLDER_ID),
        "spec": spec,
        "hyperparameters": hyperparameters,
        "outcome": {"status": status, "final_loss": loss},
        "metadata": _with_trial_label(_scalars_as_text(fields.get("metadata", {})),
                                      fields.get("trial_id")),
        "recommendation_id": fields.get("recommendation_id", ""),
        "source": source,
    })
    if "run_id" not in fields:
        report = report.model_copy(update={"run_id": content_id(report)})
    return report


def _lower(name):
    """Enum names as exports spell them too (MoE, AdamW)."""
    return name.strip().lower() if isinstance(name, str) else name


def _scalars_as_text(metadata):
    """JSONL metadata numbers and booleans as the strings labels are ({"step": 1000}, which a
    CSV's metadata.step column gives as "1000"); anything else is left for validation."""
    if not isinstance(metadata, dict):
        return metadata
    return {key: json.dumps(value) if isinstance(value, (int, float, bool)) else value
            for key, value in metadata.items()}


def _with_trial_label(metadata, trial_id):
    """The metadata, with the row's trial_id as the IMPORTED_TRIAL_KEY label."""
    if trial_id in (None, "") or not isinstance(metadata, dict):  # a bad metadata: validation's
        return metadata
    if not isinstance(trial_id, str):
        raise InvalidArgument.single("trial_id", f"expected a string (got {trial_id!r})")
    kept = metadata.get(IMPORTED_TRIAL_KEY)
    if kept is not None and kept != trial_id:
        raise InvalidArgument.single(
            "trial_id", f"{trial_id!r} contradicts metadata {IMPORTED_TRIAL_KEY} {kept!r}")
    return {**metadata, IMPORTED_TRIAL_KEY: trial_id}


def _status(status, diverged: bool | None, loss: float | None):
    """The given status, else diverged when flagged or when the loss is NaN, inf or above any
    completed run's (rows.blew_up), else completed (the record then requires a finite loss)."""
    if status is None:
        flagged = diverged or (diverged is None and blew_up(loss))
        return RunStatus.DIVERGED if flagged else RunStatus.COMPLETED
    if isinstance(status, str):
        status = status.strip().lower()
    if diverged is not None and diverged != (status == RunStatus.DIVERGED):
        raise InvalidArgument.single("diverged", f"contradicts status {status!r}")
    return status  # validated by the record: completed, diverged or failed
