"""Leave-one-group-out backtest: for each (n_params, n_active_params, n_tokens) group, fit on
every other group (plus context runs, never scored, less those of the held-out group) and
predict for the held-out spec without seeing any of its runs."""

from collections.abc import Callable

import numpy as np

from benchmark_db.records import Pins, SpecFilter, TrainingSpec
from predictor.predictors import fit_predictor
from predictor.table import GROUP_COLUMNS, RunTable


def backtest(runs: RunTable, kind: str, context: RunTable | None = None,
             progress: Callable[[int, int], None] | None = None) -> dict:
    """The JSON document of `hparamrec backtest --json`."""
    group_ids = runs.group_ids()
    groups = np.unique(group_ids)
    out = []
    for n, g in enumerate(groups):
        held = runs.subset(group_ids == g)
        train = runs.subset(group_ids != g)
        left_out = 0
        if context is not None and len(context):
            # Context runs of the held-out group would be its answers: never fitted on.
            of_held = of_group(context, held)
            left_out = int(of_held.sum())
            train = RunTable.concat([train, context.subset(~of_held)])
        predictor = fit_predictor(kind, train)
        spec, pins = held_out_spec(held)
        rec = predictor.recommend(spec, pins)
        prediction = predictor.predict(held)
        out.append({
            "n_params": spec.n_params,
            "n_active_params": spec.n_active_params,
            "n_tokens": spec.n_tokens,
            "pins": pins.model_dump(exclude_none=True),
            "context_runs_left_out": left_out,
            "model_version": predictor.version,
            "recommendation": {
                "lr": rec.lr,
                "batch_size_tokens": rec.batch_size_tokens,
                "weight_decay": rec.weight_decay,
                "qat_fraction": rec.qat_fraction,
                "lr_interval": [rec.lr_interval.lo, rec.lr_interval.hi],
                "batch_size_tokens_interval": [rec.batch_size_tokens_interval.lo,
                                               rec.batch_size_tokens_interval.hi],
            },
            "points": [
                {"lr": float(held.lr[i]), "batch_size_tokens": float(held.batch_size_tokens[i]),
                 "loss_pred": float(prediction.mean[i]), "loss_lo": float(prediction.lo[i]),
                 "loss_hi": float(prediction.hi[i])}
                for i in range(len(held))
            ],
        })
        if progress:
            progress(n + 1, len(groups))
    return {"predictor": kind, "groups": out}


def of_group(table: RunTable, group: RunTable) -> np.ndarray:
    """Which rows of table have the sizes of group's (one group's runs), to float noise (a
    file exported and read back)."""
    same = np.ones(len(table), bool)
    for column in GROUP_COLUMNS:
        lo, hi = SpecFilter.size_range(getattr(group, column)[0])  # as ListRuns' spec filter
        same &= (getattr(table, column) >= lo) & (getattr(table, column) <= hi)
    return same


def held_out_spec(held: RunTable) -> tuple[TrainingSpec, Pins]:
    """The spec of a held-out group, and pins for the hyperparameters its sweep held constant:
    the sweep measures loss only in that slice, so the recommendation is the optimum of the
    rest there (e.g. lr and batch at the weight decay the sweep used)."""
    spec = TrainingSpec.of_sizes(held.n_params[0], held.n_active_params[0], held.n_tokens[0],
                                 _mode(held.seq_len), _mode(held.weight_bits))
    constant = {name: float(values[0]) for name in ("weight_decay", "qat_fraction")
                if np.all((values := getattr(held, name)) == values[0])}
    if not spec.quantized:
        constant.pop("qat_fraction", None)
    return spec, Pins(**constant)


def _mode(values: np.ndarray) -> float:
    unique, counts = np.unique(values, return_counts=True)
    return unique[np.argmax(counts)]
