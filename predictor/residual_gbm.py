"""LightGBM on the residual of the fitted surface, in prior-normalised coordinates.

target    ln(loss) - ln(surface), minus each group's median residual: a tree keyed on sizes
          would otherwise memorise group levels and paste a neighbour's level onto a new
          group. The level is the surface's job; the trees correct only the shape of the bowl,
          which is what moves the argmin and the ranking within a sweep.
features  u = ln(lr/lr*), v = ln(B/B*) (the surface's centre), ln(lr_div/lr), ln Na, ln D, ln(D/Na).
shrink    the correction fades from 1 inside the training groups' (ln Na, ln D) cloud to 0 far
          from it, so that away from data the model is the surface alone: it extrapolates no
          worse than the surface.
"""

import copy

import numpy as np

from predictor.intervals import calibrate_by_leaving_groups_out
from predictor.loss_model import LossPrediction
from predictor.surface import LossSurface, _fingerprint, group_index
from predictor.table import RunTable

# Fixed in advance, small and heavily regularised (~1700 rows, 16 groups, noise ~0.1%).
GBM_PARAMS = dict(objective="huber", alpha=0.003, n_estimators=200, learning_rate=0.05,
                  num_leaves=7, min_child_samples=40, subsample=0.8, subsample_freq=1,
                  reg_lambda=1.0, verbose=-1, n_jobs=1)


class SurfaceGBM:
    name = "lightgbm"

    def __init__(self, e0: float | None = 0.003, calibrate: bool = True, random_state: int = 0):
        self.e0 = e0
        self.calibrate = calibrate
        self.random_state = random_state
        self.surface_ = LossSurface(e0=e0, calibrate=False)
        self.gbm_ = None

    @property
    def version_(self) -> str:
        if self.gbm_ is None:
            return f"lightgbm@{_fingerprint(self.surface_.theta_)}"
        return self.fitted_version_

    def fit(self, runs: RunTable, surface: LossSurface | None = None) -> "SurfaceGBM":
        """`surface`: one already fitted on the same runs, to save refitting it."""
        import lightgbm

        self.surface_ = copy.deepcopy(surface) if surface is not None else self.surface_.fit(runs)
        completed = runs.subset(runs.completed)
        if not len(completed):
            return self
        keys, groups = group_index(completed)
        residual = np.log(completed.loss) - np.log(self.surface_.mean(completed))
        residual -= np.array([np.median(residual[groups == j]) for j in range(len(keys))])[groups]
        self.gbm_ = lightgbm.LGBMRegressor(random_state=self.random_state, **GBM_PARAMS)
        self.gbm_.fit(self._features(completed), residual)
        trees = np.frombuffer(self.gbm_.booster_.model_to_string().encode(), np.uint8)
        self.fitted_version_ = f"lightgbm@{_fingerprint(self.surface_.theta_, trees)}"
        self._fit_shrink(keys)
        if self.calibrate and len(keys) >= 4:
            self.surface_.intervals_, self.surface_.optimum_offsets_ = \
                calibrate_by_leaving_groups_out(self, runs)
        if self.calibrate and self.surface_.boot_L0_ is None:
            self.surface_.bootstrap_level()
        return self

    def clone(self) -> "SurfaceGBM":
        twin = SurfaceGBM(self.e0, calibrate=False, random_state=self.random_state)
        twin.surface_ = self.surface_.clone()
        return twin

    def _features(self, q: RunTable) -> np.ndarray:
        s = self.surface_
        log_lr_star, log_b_star = s.centre(s.theta_, q.n_active_params, q.n_tokens)
        return np.stack([np.log(q.lr) - log_lr_star, np.log(q.batch_size_tokens) - log_b_star,
                         np.log(s.lr_div(q) / q.lr), np.log(q.n_active_params), np.log(q.n_tokens),
                         np.log(q.n_tokens / q.n_active_params)], 1)

    def _fit_shrink(self, keys: np.ndarray) -> None:
        """The training groups' cloud in (ln Na, ln D), scaled per axis, and its typical spacing."""
        self.cloud_ = np.log(keys[:, [1, 2]])
        self.cloud_scale_ = np.maximum(self.cloud_.std(0), 1e-3)
        if len(keys) > 1:
            d = np.sqrt((((self.cloud_[:, None] - self.cloud_[None]) / self.cloud_scale_) ** 2).sum(-1))
            np.fill_diagonal(d, np.inf)
            self.spacing_ = float(np.median(d.min(1)))
        else:
            self.spacing_ = 0.1

    def _shrink(self, q: RunTable) -> np.ndarray:
        z = np.stack([np.log(q.n_active_params), np.log(q.n_tokens)], 1)[:, None, :]
        d = np.sqrt((((z - self.cloud_) / self.cloud_scale_) ** 2).sum(-1)).min(1)
        return np.exp(-0.5 * (np.maximum(d - self.spacing_, 0) / self.spacing_) ** 2)

    def mean(self, q: RunTable) -> np.ndarray:
        base = self.surface_.mean(q)
        if self.gbm_ is None:
            return base
        # One thread: a few thousand rows finish faster than OpenMP's start-up on a busy machine.
        correction = self.gbm_.booster_.predict(self._features(q), num_threads=1)
        return base * np.exp(correction * self._shrink(q))

    def interval_penalty(self, q: RunTable) -> np.ndarray:
        return self.surface_.interval_penalty(q)

    def lr_limit(self, q: RunTable) -> np.ndarray:
        return self.surface_.lr_limit(q)

    def optimum_log_offsets(self, n_active: float, n_tokens: float) -> np.ndarray | None:
        return self.surface_.optimum_log_offsets(n_active, n_tokens)

    def held_out_optimum_offsets(self) -> np.ndarray | None:
        return self.surface_.held_out_optimum_offsets()

    def predict(self, q: RunTable) -> LossPrediction:
        mean = self.mean(q)
        half = self.surface_.intervals_.half_width(self.interval_penalty(q),
                                                   self.surface_.level_extrapolation_sd(q))
        return LossPrediction(mean=mean, lo=mean * np.exp(-half), hi=mean * np.exp(half))
