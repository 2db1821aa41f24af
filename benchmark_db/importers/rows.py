"""What the importers share: reading numbered rows, parsing cells, errors naming row and column,
and run ids derived from a run's content.

Rows are numbered like the lines of the file (and the rows of a spreadsheet): in a CSV the
header is row 1 and the first run is row 2; in JSONL the run on line 5 is row 5.
"""

import csv
import hashlib
import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from benchmark_db.errors import FieldViolation, InvalidArgument
from benchmark_db.records import MAX_COMPLETED_LOSS, RunReport

# Called with the number of rows read so far, every PROGRESS_EVERY rows.
Progress = Callable[[int], None]
PROGRESS_EVERY = 1000
HEADER_ROW = 1

# A run whose loss is above DIVERGED_RATIO times the best finite loss of its (N, Na, D) group
# diverged (unless its status says otherwise). In the Step Law dense sweep the runs that
# converged end within 1.2x of their group's best (2.0-2.7 nats) and the ones that blew up at
# 1.7x-3x (mostly above 5 nats), so 1.5 separates the two with margin on both sides.
DIVERGED_RATIO = 1.5


def blew_up(loss: float | None) -> bool:
    """A loss that says by itself that the run diverged: NaN, inf, or finite but above
    MAX_COMPLETED_LOSS, which the record refuses as a completed run's (the group rule could
    not tell: alone in its group, such a loss is the group's best)."""
    return loss is not None and not (math.isfinite(loss) and loss <= MAX_COMPLETED_LOSS)


# Validation names fields by their place in the record ("hyperparameters.lr"); a file has flat
# columns ("lr").
_RECORD_PARTS = ("spec.", "hyperparameters.", "outcome.")


@contextmanager
def text_file(path: Path):
    # utf-8-sig: spreadsheet exports often start with a byte-order mark.
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            yield f
    except UnicodeDecodeError as exc:
        raise InvalidArgument.single(
            "file", f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def read_csv(path: Path) -> tuple[list[str], Iterator[tuple[int, dict[str, str]]]]:
    """The header and an iterator over (row number, {column: cell}) of each non-blank row,
    which reads the file as it goes (a file of a million runs is never held at once). An error
    in the header is raised here, one in a row when the iterator reaches it: check the rows
    within structure_errors_first(rows)."""
    rows = _csv_rows(path)
    return next(rows), rows


def _csv_rows(path: Path) -> Iterator:
    """Yields the header, then (row number, {column: cell}) of each non-blank row."""
    with text_file(path) as f:
        reader = csv.reader(f)
        try:
            header = [name.strip() for name in next(reader, [])]
            if not any(header):
                raise InvalidArgument.single(f"row {HEADER_ROW}",
                                             "expected a header of column names")
            _check_unique_columns(header)
            yield header
            start = reader.line_num + 1
            for cells in reader:
                if any(cell.strip() for cell in cells):
                    if len(cells) != len(header):
                        raise InvalidArgument.single(
                            f"row {start}", f"has {len(cells)} cells, the header has {len(header)}")
                    yield start, dict(zip(header, cells))
                start = reader.line_num + 1
        except csv.Error as exc:
            raise InvalidArgument.single(f"row {reader.line_num}",
                                         f"not valid CSV: {exc}") from None


@contextmanager
def structure_errors_first(rows: Iterator):
    """For a block that checks the rows of read_csv: an error the block raises is raised once
    the rest of the file has been read, unless the file turns out not to be UTF-8 text, not
    CSV, or to have a row of another length than the header, which is raised instead: the
    error a file gets is the one it got when the whole file was read before any row was
    checked."""
    try:
        yield
    except InvalidArgument:
        for _ in rows:
            pass
        raise


def _check_unique_columns(header: list[str]) -> None:
    seen = set()
    for position, name in enumerate(header, 1):
        if not name:
            raise InvalidArgument.single(
                f"row {HEADER_ROW}", f"column {position} has no name (a trailing comma?)")
        if name in seen:
            raise InvalidArgument.single(f"row {HEADER_ROW}: {name}", "column appears twice")
        seen.add(name)


def counted(rows: Iterable, progress: Progress | None) -> Iterator:
    """Yields the rows, telling progress how many have been read every PROGRESS_EVERY rows."""
    for count, row in enumerate(rows, 1):
        yield row
        if progress is not None and count % PROGRESS_EVERY == 0:
            progress(count)


@contextmanager
def at_row(number: int, columns: Mapping[str, str] | None = None):
    """Re-raises InvalidArgument with each field as 'row N: column'. columns maps record field
    names to the file's column names where they differ."""
    try:
        yield
    except InvalidArgument as exc:
        raise InvalidArgument([
            FieldViolation(f"row {number}: {_column(v.field, columns or {})}", v.reason)
            for v in exc.violations
        ]) from None


def _column(field: str, columns: Mapping[str, str]) -> str:
    for part in _RECORD_PARTS:
        if field.startswith(part):
            field = field[len(part):]
            break
    return columns.get(field, field)


def number(value, column: str) -> float | None:
    """A float from a CSV cell or JSON value; None when empty. NaN and inf pass (a diverged
    loss); range checks are the record's."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            return float(value)
    except ValueError:
        pass
    except OverflowError:  # a JSON integer of hundreds of digits
        raise InvalidArgument.single(column, f"too large (got {str(value)[:20]}...)") from None
    raise InvalidArgument.single(column, f"not a number (got {value!r})")


def required_number(value, column: str) -> float:
    found = number(value, column)
    if found is None:
        raise InvalidArgument.single(column, "required")
    return found


def integer(value, column: str) -> int | None:
    """An int; accepts 2048.0, as spreadsheets and pandas write whole numbers."""
    found = number(value, column)
    if found is None:
        return None
    if not (math.isfinite(found) and found.is_integer()):
        raise InvalidArgument.single(column, f"not a whole number (got {value!r})")
    return int(found)


_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


def boolean(value, column: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    if not text:
        return None
    raise InvalidArgument.single(column, f"expected true or false (got {value!r})")


def content_id(report: RunReport, prefix: str = "") -> str:
    """A run id that depends only on what the run is (spec, hyperparameters, outcome, metadata),
    so importing the same run again, from any file or format, finds it already stored."""
    content = report.model_dump(mode="json", exclude={"run_id", "source"})
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
    return f"{prefix}sha256:{digest[:32]}"
