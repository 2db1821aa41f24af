"""Step Law sweep files (Li et al. 2025, "Predictable Scale: Part I"; github.com/step-law/steplaw,
data/*_lr_bs_loss.csv): one pretraining run per row of a learning-rate by batch-size grid.

Dense columns: h, ffnh, numh, numl, lr, bs (in sequences), ti, loss, smooth loss, exp_name,
D (tokens), N (non-embedding parameters), D/N. The MoE files add Na (active parameters) and
seq_len, which are read when present.
"""

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from benchmark_db.errors import FieldViolation, InvalidArgument
from benchmark_db.importers.packed import PackedRuns
from benchmark_db.importers.rows import (DIVERGED_RATIO, HEADER_ROW, Progress, at_row, blew_up,
                                         content_id, counted, number, read_csv, required_number,
                                         structure_errors_first)
from benchmark_db.records import (DEFAULT_SEQ_LEN, NO_QUANTIZATION_BITS, RunReport, RunStatus,
                                  resolve_spec, validated)

SOURCE = "import:steplaw"
RUN_ID_PREFIX = "steplaw:"
REQUIRED_COLUMNS = ("N", "D", "lr", "bs", "smooth loss")
# Columns that become fields of the record; every other one is kept as metadata, except D/N,
# which is N and D again.
_FIELD_COLUMNS = {*REQUIRED_COLUMNS, "Na", "seq_len"}
_DERIVED_COLUMNS = {"D/N"}
# The study trained every run with AdamW at weight decay 0.1; the files do not record it.
STEPLAW_WEIGHT_DECAY = 0.1
# A run diverged when a loss is NaN/inf, its smoothed loss is above any completed run's
# (rows.blew_up), or above DIVERGED_RATIO (rows.py) times the best smoothed loss of the runs
# of its (N, Na, D) group that did not blow up.


@dataclass(frozen=True)
class _Row:
    number: int
    cells: dict[str, str]
    n_params: float
    n_active_params: float | None
    n_tokens: float
    seq_len: float | None
    lr: float
    batch_sequences: float
    smooth_loss: float
    raw_loss: float | None

    @property
    def group(self) -> tuple[float, float, float]:
        return self.n_params, self.n_active_params or self.n_params, self.n_tokens

    @property
    def loss_blew_up(self) -> bool:
        """Diverged by its own losses alone, whatever its group's best."""
        return blew_up(self.smooth_loss) or (
            self.raw_loss is not None and not math.isfinite(self.raw_loss))


def read(path: Path, progress: Progress | None = None) -> PackedRuns:
    """The file's runs. Its rows are all held (a run's status and id depend on the other rows
    of its group and its name); the runs are kept packed."""
    header, cells_by_row = read_csv(path)
    with structure_errors_first(cells_by_row):
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise InvalidArgument([FieldViolation(f"row {HEADER_ROW}: {c}", "missing column")
                                   for c in missing])
        moe = "Na" in header
        # Validation errors name the file's columns, not the record's fields.
        columns = {"n_params": "N", "n_active_params": "Na" if moe else "N", "n_tokens": "D",
                   "batch_size_tokens": "bs", "final_loss": "smooth loss", "run_id": "exp_name"}
        rows = []
        for row_number, cells in cells_by_row:
            with at_row(row_number):
                rows.append(_parse(row_number, cells))
    best = _group_best_losses(rows)
    names = _distinct_rows_per_name(rows)
    reports = PackedRuns()
    for row in counted(rows, progress):
        with at_row(row.number, columns):
            report = _report(row, moe, best.get(row.group), names)
        reports.add(row.number, report)
    return reports


def _distinct_rows_per_name(rows: list[_Row]) -> Counter:
    """How many different rows carry each exp_name: a row repeated (a file concatenated with
    itself) is one run under its name; only different runs sharing a name need other ids."""
    distinct = {(row.cells.get("exp_name", "").strip(), tuple(sorted(row.cells.items())))
                for row in rows}
    return Counter(name for name, _ in distinct)


def _parse(row_number: int, cells: dict[str, str]) -> _Row:
    if "Na" in cells and not cells["Na"].strip():  # a MoE file: every run has active params
        raise InvalidArgument.single("Na", "required in a file with an Na column")
    return _Row(
        number=row_number, cells=cells,
        n_params=required_number(cells["N"], "N"),
        n_active_params=number(cells.get("Na"), "Na"),
        n_tokens=required_number(cells["D"], "D"),
        seq_len=number(cells.get("seq_len"), "seq_len"),
        lr=required_number(cells["lr"], "lr"),
        batch_sequences=required_number(cells["bs"], "bs"),
        smooth_loss=_loss(cells["smooth loss"]),
        raw_loss=number(cells.get("loss"), "loss"),
    )


def _loss(cell: str) -> float:
    """An empty smooth loss is refused, not taken for a diverged run: it may be a run that
    never finished (pandas writes NaN as an empty cell: write nan for a run that blew up)."""
    if not cell.strip():
        raise InvalidArgument.single("smooth loss", "empty: write nan for a run whose loss blew "
                                                    "up, and leave out a run that never finished")
    return required_number(cell, "smooth loss")


def _group_best_losses(rows: list[_Row]) -> dict[tuple, float]:
    best: dict[tuple, float] = {}
    for row in rows:
        if not row.loss_blew_up:
            best[row.group] = min(best.get(row.group, math.inf), row.smooth_loss)
    return best


def _report(row: _Row, moe: bool, group_best: float | None, names: Counter) -> RunReport:
    seq_len = row.seq_len if row.seq_len is not None else DEFAULT_SEQ_LEN
    diverged = row.loss_blew_up or (
        group_best is not None and row.smooth_loss > DIVERGED_RATIO * group_best)
    spec = resolve_spec(
        n_params=row.n_params, n_active_params=row.n_active_params, n_tokens=row.n_tokens,
        seq_len=seq_len, architecture="moe" if moe else "dense",
        weight_bits=NO_QUANTIZATION_BITS,  # bf16 training, no quantization
        field_prefix="",
    )
    report = validated(RunReport, {
        "run_id": RUN_ID_PREFIX + row.cells.get("exp_name", "").strip(),
        "spec": spec,
        "hyperparameters": {"lr": row.lr, "batch_size_tokens": row.batch_sequences * seq_len,
                            "weight_decay": STEPLAW_WEIGHT_DECAY, "qat_fraction": 0.0},
        # A diverged run keeps the loss it reached (when finite): nothing observed is dropped.
        "outcome": {"status": RunStatus.DIVERGED if diverged else RunStatus.COMPLETED,
                    "final_loss": row.smooth_loss if math.isfinite(row.smooth_loss) else None},
        "metadata": {name: value.strip() for name, value in row.cells.items()
                     if name not in _FIELD_COLUMNS | _DERIVED_COLUMNS and value.strip()},
        "source": SOURCE,
    })
    name = row.cells.get("exp_name", "").strip()
    if not name or names[name] > 1:  # no name that tells this run from the others
        report = report.model_copy(update={"run_id": content_id(report, RUN_ID_PREFIX)})
    return report
