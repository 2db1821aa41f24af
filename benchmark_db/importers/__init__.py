"""Runs from files into the store: Step Law sweeps and the generic CSV/JSONL format.

Every row is validated by the same rules as ReportRun before anything is written: a bad row
raises InvalidArgument naming its row and column, and nothing from that file is stored.
Importing a file again adds nothing: each run's id is stable (given, built from the file's run
name, or a hash of its content) and the store skips ids it already holds.
"""

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmark_db.errors import InvalidArgument
from benchmark_db.importers import generic, steplaw_csv
from benchmark_db.importers.packed import PackedRuns
from benchmark_db.importers.rows import Progress
from benchmark_db.records import RunRecord, RunReport, RunStatus
from benchmark_db.store import RunStore

_READERS = {
    "steplaw": steplaw_csv.read,
    "csv": generic.read_csv_runs,
    "jsonl": generic.read_jsonl_runs,
}
FORMATS = tuple(_READERS)


@dataclass(frozen=True)
class ImportResult:
    read: int
    added: int
    already_stored: int  # includes a run that appears twice in the file
    diverged: int
    # run_ids stored before with other values (spec, hyperparameters or outcome), which are kept
    conflicting: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {**asdict(self), "conflicting": list(self.conflicting)}


def read_file(path: str | Path, format: str, progress: Progress | None = None) -> PackedRuns:
    """Reads and validates every run of the file, kept packed (packed.py: a tenth of the memory
    of RunReports); iterating the result yields the RunReports. progress, if given, is called
    with the number of rows read so far every rows.PROGRESS_EVERY rows."""
    reader = _READERS.get(format)
    if reader is None:
        raise InvalidArgument.single("format",
                                     f"must be one of {', '.join(FORMATS)} (got {format!r})")
    return reader(Path(path), progress)


def read_runs(path: str | Path, format: str, progress: Progress | None = None) -> list[RunReport]:
    """Every run of the file, validated, as a list (read_file, for a file to store)."""
    return list(read_file(path, format, progress))


def import_file(store: RunStore, tenant: str, path: str | Path, format: str,
                progress: Progress | None = None) -> ImportResult:
    """Reads and validates the whole file, then stores its runs in one transaction."""
    return store_runs(store, tenant, read_file(path, format, progress))


def store_runs(store: RunStore, tenant: str, reports: Iterable[RunReport]) -> ImportResult:
    """Stores runs read by read_file (or read_runs) in one transaction, as they are iterated
    (the CLI reads the file before it opens the database: a bad row leaves no new database
    behind)."""
    read = diverged = 0
    conflicting: dict[str, None] = {}  # in the order of the file, once each

    def counted(reports):
        nonlocal read, diverged
        for report in reports:
            read += 1
            diverged += report.outcome.status is RunStatus.DIVERGED
            yield report

    def stored_before(report: RunReport, stored: RunRecord) -> None:
        if stored.differs_from(report):
            conflicting[report.run_id] = None

    added = store.add_many(tenant, counted(reports), stored_before)
    return ImportResult(read=read, added=added, already_stored=read - added, diverged=diverged,
                        conflicting=tuple(conflicting))
