"""`auto`: the candidate model with the lowest regret when each of the training groups (up to
MAX_HELD_OUT_GROUPS of them) is left out in turn (a leave-one-group-out inside fit(), so nested
inside any outer backtest), with its intervals calibrated on the same held-out folds.

The candidates were fixed before any backtest was run: the surface with three weighting
localities, and the surface with the LightGBM residual layer with two. The choice is the
first of them within one standard error of the lowest regret (adopted for stability, after
backtests had been seen: see docs/design.md). Nothing here sees a run outside the table
given to fit().
"""

import numpy as np

from predictor.argmin import ModelRecommender
from predictor.backtest import held_out_spec
from predictor.intervals import IntervalModel, best_run_offset, held_out_groups
from predictor.loss_model import LossPrediction
from predictor.residual_gbm import SurfaceGBM
from predictor.scoring import regret
from predictor.surface import LossSurface, group_index
from predictor.table import RunTable

CANDIDATES = {
    "surface/e0=0.003": lambda: LossSurface(e0=0.003, calibrate=False),
    "surface/e0=0.01": lambda: LossSurface(e0=0.01, calibrate=False),
    "surface/e0=0.03": lambda: LossSurface(e0=0.03, calibrate=False),
    "lightgbm/e0=0.003": lambda: SurfaceGBM(e0=0.003, calibrate=False),
    "lightgbm/e0=0.01": lambda: SurfaceGBM(e0=0.01, calibrate=False),
}
MIN_GROUPS_TO_SELECT = 4  # fewer groups: no held-out evidence, keep the first candidate
BOOTSTRAP_DRAWS = 20  # of the chosen model's surface: the 80% interval of the optimum


class AutoModel:
    name = "auto"

    def __init__(self, candidates: tuple[str, ...] = tuple(CANDIDATES)):
        self.candidates = candidates
        self.model_ = CANDIDATES[candidates[0]]()
        self.choice_ = candidates[0]
        self.inner_regret_: dict[str, float] = {}  # mean over the held-out groups
        self.inner_regrets_: dict[str, list[float]] = {}  # per held-out group

    @property
    def version_(self) -> str:
        return f"auto[{self.choice_}]:{self.model_.version_}"

    def fit(self, runs: RunTable) -> "AutoModel":
        keys, groups = group_index(runs)
        if len(keys) < MIN_GROUPS_TO_SELECT:
            self.model_ = _calibrated(CANDIDATES[self.choice_]().fit(runs), None)
            return self
        surfaces: dict[float, tuple[LossSurface, list[LossSurface]]] = {}
        results = {}
        for name in self.candidates:
            model = CANDIDATES[name]()
            results[name] = self._leave_groups_out(model, runs, groups, surfaces)
            self.inner_regret_[name] = float(np.mean(results[name][1]))
        self.inner_regrets_ = {name: results[name][1] for name in self.candidates}
        self.choice_ = within_one_standard_error(self.inner_regrets_)
        fitted, _, folds, offsets = results[self.choice_]
        self.model_ = _calibrated(fitted, folds)
        _surface_of(self.model_).optimum_offsets_ = offsets
        _surface_of(self.model_).bootstrap(runs, BOOTSTRAP_DRAWS)
        return self

    @staticmethod
    def _leave_groups_out(model, runs, groups, surfaces):
        """Fits on all runs and on each group left out; returns (fitted model, regrets, folds,
        optimum offsets), per held-out group."""
        shared = surfaces.get(model.e0) if isinstance(model, SurfaceGBM) else None
        model = model.fit(runs, surface=shared[0]) if shared else model.fit(runs)
        regrets, folds, offsets, inner_surfaces = [], [], [], []
        for k, j in enumerate(held_out_groups(groups)):
            train, held = runs.subset(groups != j), runs.subset(groups == j)
            if not held.completed.any():  # only diverged runs: no regret to score it by
                inner_surfaces.append(None)
                continue
            inner = model.clone()
            inner = inner.fit(train, surface=shared[1][k]) if shared and shared[1][k] else inner.fit(train)
            inner_surfaces.append(inner)
            spec, pins = held_out_spec(held)
            rec = ModelRecommender(inner, train).recommend(spec, pins)
            regrets.append(regret(held, rec.lr, rec.batch_size_tokens))
            done = held.subset(held.completed)
            folds.append((np.log(done.loss) - np.log(inner.mean(done)), inner.interval_penalty(done)))
            offsets.append(best_run_offset(held, rec.lr, rec.batch_size_tokens))
        if isinstance(model, LossSurface):
            surfaces.setdefault(model.e0, (model, inner_surfaces))
        return model, regrets, folds, np.array(offsets).reshape(-1, 2)

    def mean(self, q: RunTable) -> np.ndarray:
        return self.model_.mean(q)

    def predict(self, q: RunTable) -> LossPrediction:
        return self.model_.predict(q)

    def lr_limit(self, q: RunTable) -> np.ndarray:
        return self.model_.lr_limit(q)

    def interval_penalty(self, q: RunTable) -> np.ndarray:
        return self.model_.interval_penalty(q)

    def optimum_log_offsets(self, n_active: float, n_tokens: float) -> np.ndarray | None:
        return self.model_.optimum_log_offsets(n_active, n_tokens)

    def held_out_optimum_offsets(self) -> np.ndarray | None:
        return self.model_.held_out_optimum_offsets()


def within_one_standard_error(regrets: dict[str, list[float]]) -> str:
    """The first candidate (they are listed simplest first) whose mean held-out regret is
    within one standard error of the lowest: the one-standard-error rule of cross-validation.
    Regrets come in grid steps and near-ties are common: taking the lowest mean flipped the
    model, and every spec's lr by 15%, on a single new run."""
    means = {name: float(np.mean(r)) for name, r in regrets.items()}
    best = min(means, key=means.get)
    spread = regrets[best]
    tolerance = np.std(spread, ddof=1) / np.sqrt(len(spread)) if len(spread) > 1 else 0.0
    return next(name for name in regrets if means[name] <= means[best] + tolerance)


def _surface_of(model) -> LossSurface:
    return model.surface_ if isinstance(model, SurfaceGBM) else model


def _calibrated(model, folds):
    """The model with intervals from its own held-out folds (uncalibrated defaults if none),
    widened beyond the sizes it was fitted on."""
    surface = _surface_of(model)
    surface.intervals_ = IntervalModel.from_held_out(folds) if folds else IntervalModel()
    surface.bootstrap_level()
    return model
