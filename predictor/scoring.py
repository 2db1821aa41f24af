"""How recommendations and loss predictions are scored against a real sweep.

regret: the relative excess of the (smoothed) loss at the group's grid point nearest to the
recommendation, in (log2 lr, log2 batch tokens), over the group's best loss. Diverged points
keep their observed loss, so recommending into the divergence cliff costs what it cost.
"""

import numpy as np
from scipy.stats import spearmanr

from predictor.table import RunTable


def nearest_point(held: RunTable, lr: float, batch_size_tokens: float) -> int:
    d = (np.log2(held.lr) - np.log2(lr)) ** 2 + (
        np.log2(held.batch_size_tokens) - np.log2(batch_size_tokens)) ** 2
    return int(np.argmin(d))


def regret(held: RunTable, lr: float, batch_size_tokens: float) -> float:
    """NaN for a group with no completed run: there is no best loss to measure against."""
    if not held.completed.any():
        return float("nan")
    losses = np.where(np.isfinite(held.loss), held.loss, np.inf)
    best = losses[held.completed].min()
    return float(losses[nearest_point(held, lr, batch_size_tokens)] / best - 1)


def rank_correlation(held: RunTable, predicted: np.ndarray) -> float:
    """Spearman correlation of predicted and real loss on the group's completed points."""
    ok = held.completed
    return float(spearmanr(predicted[ok], held.loss[ok]).statistic)


def coverage(held: RunTable, lo: np.ndarray, hi: np.ndarray) -> float:
    ok = held.completed
    return float(np.mean((held.loss[ok] >= lo[ok]) & (held.loss[ok] <= hi[ok])))


def relative_width(held: RunTable, lo: np.ndarray, hi: np.ndarray, mean: np.ndarray) -> float:
    ok = held.completed
    return float(np.mean((hi[ok] - lo[ok]) / mean[ok]))


def summary(values: list[float]) -> dict[str, float]:
    v = np.asarray(values)
    return {"mean": float(v.mean()), "median": float(np.median(v)), "max": float(v.max())}
