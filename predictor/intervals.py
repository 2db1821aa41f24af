"""Predictive intervals calibrated by leaving groups out.

For a spec the model has never seen, most of the error is a shared level offset (the loss of
a new corpus/size is off by a constant), plus a shape error that grows away from the optimum.
So the sd of ln-loss is modelled as sqrt(s_level^2 + (s_shape + kappa P)^2), P the predicted
relative excess, and a scale k is set so that the held-out groups' coverage is the nominal
80%. All of it is measured on groups held out of the training data handed to fit(): never on
a group the model is later scored on.
"""

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

COVERAGE = 0.8
# The spread grows with the penalty up to a doubled loss, then stays: the calibration sees
# penalties up to ~0.2 (the far flanks of real sweeps), and past a doubled loss (a pinned lr
# far beyond divergence) the bowl's form says nothing about the spread. Without the cap such
# a point's interval was [0, inf].
MAX_PENALTY = 1.0


@dataclass(frozen=True)
class IntervalModel:
    level_sd: float = 0.01  # uncalibrated defaults: a 1% level error, a 0.3% shape error
    shape_sd: float = 0.003
    kappa: float = 0.3
    scale: float = 1.0

    def half_width(self, penalty: np.ndarray) -> np.ndarray:
        """Half-width of the central 80% interval of ln-loss."""
        penalty = np.minimum(penalty, MAX_PENALTY)
        sd = np.sqrt(self.level_sd**2 + (self.shape_sd + self.kappa * penalty) ** 2)
        return norm.ppf(0.5 + COVERAGE / 2) * self.scale * sd

    @classmethod
    def from_held_out(cls, folds: list[tuple[np.ndarray, np.ndarray]]) -> "IntervalModel":
        """folds: per held-out group, (ln-residuals of its completed runs, their penalties)."""
        residuals = [r for r, _ in folds]
        penalty = np.concatenate([p for _, p in folds])
        offsets = np.array([np.median(r) for r in residuals])
        shape = np.concatenate([r - o for r, o in zip(residuals, offsets)])
        level_sd = float(np.sqrt(np.mean(offsets**2)))
        # E|shape error| = sqrt(2/pi) (s_shape + kappa P): least squares, kept non-negative.
        design = np.stack([np.ones_like(penalty), penalty], 1) * np.sqrt(2 / np.pi)
        shape_sd, kappa = np.maximum(np.linalg.lstsq(design, np.abs(shape), rcond=None)[0], [1e-4, 0.0])
        raw = cls(level_sd, float(shape_sd), float(kappa), 1.0)
        ratio = np.abs(np.concatenate(residuals)) / raw.half_width(penalty)
        return cls(level_sd, float(shape_sd), float(kappa), float(np.quantile(ratio, COVERAGE)))


def held_out_residuals(model, runs) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each group of `runs`: a warm-started clone fitted on the others, and its
    (ln-residuals, penalties) on the group's completed runs."""
    from predictor.surface import group_index

    _, groups = group_index(runs)
    folds = []
    for j in np.unique(groups):
        inner = model.clone().fit(runs.subset(groups != j))
        held = runs.subset((groups == j) & runs.completed)
        if len(held):
            folds.append((np.log(held.loss) - np.log(inner.mean(held)), inner.interval_penalty(held)))
    return folds


def calibrate_by_leaving_groups_out(model, runs) -> IntervalModel:
    return IntervalModel.from_held_out(held_out_residuals(model, runs))
