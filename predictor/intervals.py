"""Predictive intervals calibrated by leaving groups out.

For a spec the model has never seen, most of the error is a shared level offset (the loss of
a new corpus/size is off by a constant), plus a shape error that grows away from the optimum.
So the sd of ln-loss is modelled as sqrt(s_level^2 + (s_shape + kappa P)^2), P the predicted
relative excess, and a scale k is set so that the held-out groups' coverage is the nominal
80%. All of it is measured on groups held out of the training data handed to fit(): never on
a group the model is later scored on. Those groups lie within the sizes of the others, so for
a spec beyond them the level's own extrapolation sd (LossSurface.level_extrapolation_sd) is
added in quadrature.
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
# A model is fitted once per held-out group: a refit's cost grows with the store's groups
# (63 s of CPU at 80 groups). Beyond this many, the groups held out are spread evenly over the
# sorted sizes. The real sweep has 17 groups, so neither its backtest nor a service holding it
# is affected.
MAX_HELD_OUT_GROUPS = 20


@dataclass(frozen=True)
class IntervalModel:
    level_sd: float = 0.01  # uncalibrated defaults: a 1% level error, a 0.3% shape error
    shape_sd: float = 0.003
    kappa: float = 0.3
    scale: float = 1.0

    def half_width(self, penalty: np.ndarray, extrapolation_sd: np.ndarray | float = 0.0) -> np.ndarray:
        """Half-width of the central 80% interval of ln-loss. extrapolation_sd: what the
        level's move beyond the sizes fitted on adds (the held-out groups of the calibration
        lie within them, so it is not in level_sd); scaled as the rest."""
        penalty = np.minimum(penalty, MAX_PENALTY)
        sd = np.sqrt(self.level_sd**2 + np.square(extrapolation_sd)
                     + (self.shape_sd + self.kappa * penalty) ** 2)
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


def held_out_groups(groups: np.ndarray, at_most: int = MAX_HELD_OUT_GROUPS) -> np.ndarray:
    """The group indices a leave-groups-out (auto's selection, the calibrations) holds out in
    turn: all, or `at_most` of them spread evenly (group_index sorts them by size)."""
    unique = np.unique(groups)
    if len(unique) <= at_most:
        return unique
    return unique[np.unique(np.linspace(0, len(unique) - 1, at_most).round().astype(int))]


def held_out_folds(model, runs) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """For each group of `runs`, a warm-started clone fitted on the others: its (ln-residuals,
    penalties) on the group's completed runs, and where the group's best run lies relative to
    its recommendation (optimum_offset)."""
    from predictor.surface import group_index

    _, groups = group_index(runs)
    folds, offsets = [], []
    for j in held_out_groups(groups):
        train = runs.subset(groups != j)
        inner = model.clone().fit(train)
        held = runs.subset(groups == j)
        done = held.subset(held.completed)
        if len(done):
            folds.append((np.log(done.loss) - np.log(inner.mean(done)), inner.interval_penalty(done)))
            offsets.append(optimum_offset(inner, train, held))
    return folds, np.array(offsets).reshape(-1, 2)


def optimum_offset(model, train, held) -> np.ndarray:
    """ln(lr, batch) of the held-out group's best completed run minus those the model, fitted
    on `train`, recommends for its spec: how far off a recommendation for a new spec is."""
    from predictor.argmin import ModelRecommender
    from predictor.backtest import held_out_spec

    spec, pins = held_out_spec(held)
    rec = ModelRecommender(model, train).recommend(spec, pins)
    return best_run_offset(held, rec.lr, rec.batch_size_tokens)


def best_run_offset(held, lr: float, batch_size_tokens: float) -> np.ndarray:
    """ln(lr, batch) of the group's best completed run minus ln(lr, batch_size_tokens)."""
    done = np.flatnonzero(held.completed)
    best = done[np.argmin(held.loss[done])]
    return np.log([held.lr[best] / lr, held.batch_size_tokens[best] / batch_size_tokens])


def calibrate_by_leaving_groups_out(model, runs) -> tuple[IntervalModel, np.ndarray]:
    """The loss intervals, and the held-out groups' optimum offsets (for the lr and batch ones)."""
    folds, offsets = held_out_folds(model, runs)
    return IntervalModel.from_held_out(folds), offsets
