"""The tenant's loss model conditioned on one study's own trials.

    ln L(x) = ln m(x) + r(x),    r ~ GP(0, k),
    k(x, x') = LEVEL_SD^2 + SHAPE_SD^2 exp(-|x - x'|^2 / 2),  |.| scaled by LENGTH_SCALE

m is the tenant's current fitted model (the published-law prior until it has runs), which
already knows the stored runs of neighbouring sizes; x are the search coordinates of the free
hyperparameters (ln lr, ln batch, ln weight decay, QAT fraction). The constant term lets one
trial move the whole level (absolute losses transfer poorly across specs) while the smooth term
learns where the model's bowl is misplaced. Closed form, a few trials: no hyperparameter fit.

The constants were fixed before any closed-loop run on the dense sweep, from what the models
already say, not tuned on it:
LEVEL_SD    the level of an unseen spec is off by ~1-2% (held-out Chinchilla-law fits)
SHAPE_SD    the learned models' held-out regret is a few 0.1%: that is the size of the misfit
            of the bowl near its optimum
NOISE_SD    run-to-run noise of a final loss: half the surface's soft_l1 scale of 0.3%
LENGTH_SCALE a misplaced optimum changes the loss smoothly over the bowl's width, a factor of
            e in lr or batch; 0.3 in QAT fraction
Diverged trials are not regression targets (their loss says nothing about the bowl): a
configuration at or above a diverged trial's lr, at a batch within SIMILAR_BATCH of its batch,
is excluded.
"""

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from optuna.trial import FrozenTrial, TrialState
from scipy.linalg import cho_factor, cho_solve, solve_triangular

from benchmark_db.records import TrainingSpec
from predictor.loss_model import LossModel
from predictor.recommendation import HYPERPARAMETERS
from predictor.study import SearchSpace
from predictor.table import RunTable

LEVEL_SD = 0.02
SHAPE_SD = 0.004
NOISE_SD = 0.0015
LENGTH_SCALE = {"lr": 1.0, "batch_size_tokens": 1.0, "weight_decay": 1.0, "qat_fraction": 0.3}
SIMILAR_BATCH = math.log(2.0)

Params = dict[str, np.ndarray]


def _stack(rows: list[dict]) -> Params:
    return {n: np.array([r[n] for r in rows], float) for n in HYPERPARAMETERS}


@dataclass(frozen=True)
class StudyTrials:
    """A study's trials as the sampler uses them. A diverged run is a FAIL trial with user
    attribute outcome=diverged; any other FAIL (hardware, preemption) says nothing."""

    completed: Params
    ln_loss: np.ndarray
    diverged: Params
    pending: Params

    @classmethod
    def of(cls, trials: Sequence[FrozenTrial], exclude: int | None = None) -> "StudyTrials":
        done, losses, diverged, pending = [], [], [], []
        for t in trials:
            if t.number == exclude or not all(n in t.params for n in HYPERPARAMETERS):
                continue
            if t.state is TrialState.COMPLETE and t.value is not None and t.value > 0:
                done.append(t.params)
                losses.append(math.log(t.value))
            elif t.state is TrialState.FAIL and t.user_attrs.get("outcome") == "diverged":
                diverged.append(t.params)
            elif t.state is TrialState.RUNNING:
                pending.append(t.params)
        return cls(_stack(done), np.array(losses, float), _stack(diverged), _stack(pending))

    @property
    def n_completed(self) -> int:
        return len(self.ln_loss)

    @property
    def n_pending(self) -> int:
        return len(self.pending["lr"])


def squared_distances(a: np.ndarray, b: np.ndarray, scales: np.ndarray | None = None) -> np.ndarray:
    """|a_i - b_j|^2 over rows, each axis divided by its scale if given. One axis at a time, in
    place: an (n, m, d) difference summed over its short last axis was most of a GP prediction
    over a few thousand candidates. The same operations in the same order, so the same values
    to the bit."""
    d2 = np.zeros((len(a), len(b)))
    for k in range(a.shape[1]):
        step = np.subtract.outer(a[:, k], b[:, k])
        if scales is not None:
            step /= scales[k]
        step *= step
        d2 += step
    return d2


class ResidualGP:
    def __init__(self, length_scales: np.ndarray, noise_sd: float = NOISE_SD):
        self.length_scales = length_scales
        self.noise_sd = noise_sd
        self.x_ = np.zeros((0, len(length_scales)))
        self.y_ = np.zeros(0)
        self.alpha_ = np.zeros(0)
        self.chol_ = None

    def kernel(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return LEVEL_SD**2 + self.shape_kernel(a, b)

    def shape_kernel(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d2 = squared_distances(a, b, self.length_scales)
        d2 *= -0.5
        np.exp(d2, out=d2)
        d2 *= SHAPE_SD**2
        return d2

    def fit(self, x: np.ndarray, y: np.ndarray) -> "ResidualGP":
        self.x_, self.y_ = x, y
        if len(x):
            self.chol_ = cho_factor(self.kernel(x, x) + self.noise_sd**2 * np.eye(len(x)))
            self.alpha_ = cho_solve(self.chol_, y)
        return self

    def mahalanobis(self) -> float:
        """y' (K + noise)^-1 y of the fitted residuals: chi-square with len(y) degrees of
        freedom if they are what this GP says residuals are."""
        return float(self.y_ @ self.alpha_) if len(self.x_) else 0.0

    def scatter(self) -> float:
        """The fitted residuals' Mahalanobis distance with their common level profiled out:
        y'K0^-1 y - (1'K0^-1 y)^2 / 1'K0^-1 1, K0 the shape kernel plus noise (no level term).
        Chi-square with len(y) - 1 degrees of freedom for residuals that are this GP's at any
        level, so a spec whose losses all sit a constant factor off the model's (another
        tokenizer or dataset: nothing that changes which configuration is best) does not count
        against the reports."""
        n = len(self.x_)
        if n < 2:
            return 0.0
        chol = cho_factor(self.shape_kernel(self.x_, self.x_) + self.noise_sd**2 * np.eye(n))
        inv_y, inv_1 = cho_solve(chol, self.y_), cho_solve(chol, np.ones(n))
        return float(self.y_ @ inv_y - (inv_y.sum()) ** 2 / inv_1.sum())

    def log_marginal_likelihood(self) -> float:
        n = len(self.x_)
        return (-0.5 * self.mahalanobis() - float(np.log(np.diag(self.chol_[0])).sum())
                - 0.5 * n * math.log(2 * math.pi)) if n else 0.0

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and sd of the residual (the latent function, without noise)."""
        prior_var = LEVEL_SD**2 + SHAPE_SD**2
        if not len(self.x_):
            return np.zeros(len(x)), np.full(len(x), math.sqrt(prior_var))
        ks = self.kernel(x, self.x_)
        # ks K^-1 ks' = |U^-T ks'|^2 with K = U'U: one triangular solve, not cho_solve's two
        # (the cost of a prediction over thousands of candidates grows with trials squared).
        factor, lower = self.chol_
        v = solve_triangular(factor, ks.T, lower=lower, trans="N" if lower else "T")
        var = prior_var - np.einsum("ij,ij->j", v, v)
        return ks @ self.alpha_, np.sqrt(np.maximum(var, 1e-12))


class ConditionedModel:
    def __init__(self, model: LossModel, spec: TrainingSpec, space: SearchSpace, trials: StudyTrials,
                 noise_sd: float = NOISE_SD):
        self.model = model
        self.spec = spec
        self.space = space
        self.trials = trials
        self.gp = ResidualGP(np.array([LENGTH_SCALE[n] for n in space.free]), noise_sd)
        if trials.n_completed:
            residual = trials.ln_loss - self.prior(trials.completed)
            self.gp.fit(space.encode(trials.completed), residual)

    def consistency(self) -> tuple[float, float]:
        """(chi-square, p-value) of the completed trials' residuals under the GP, their level
        profiled out: a small p says the reported losses differ from one another by more than
        the model's shape uncertainty and NOISE_SD allow (noisy reports, e.g. one step's
        training loss, or a bowl far off the model's for this spec). A loss level unlike the
        model's alone does not lower it."""
        from scipy.stats import chi2

        n = self.trials.n_completed
        if n < 2:
            return 0.0, 1.0
        stat = self.gp.scatter()
        return stat, float(chi2.sf(stat, n - 1))

    def nearest_trials(self, k: int) -> "ConditionedModel":
        """The same model conditioned only on the k completed trials nearest (in the GP's length
        scales) the one with the lowest posterior mean: the part of the bowl where the ranking
        is made, and where SHAPE_SD describes the model's misfit."""
        if self.trials.n_completed <= k:
            return self
        tried = self.trials.completed
        x = self.space.encode(tried) / self.gp.length_scales
        centre = x[int(np.argmin(self.predict(tried)[0]))]
        nearest = np.argsort(np.sum((x - centre) ** 2, axis=1), kind="stable")[:k]
        trials = replace(self.trials, completed={n: v[nearest] for n, v in tried.items()},
                         ln_loss=self.trials.ln_loss[nearest])
        return ConditionedModel(self.model, self.spec, self.space, trials, self.gp.noise_sd)

    def with_fitted_noise(self, factors=tuple(2.0**j for j in range(6))) -> "ConditionedModel":
        """The same model with the GP's noise sd the maximiser of its marginal likelihood among
        NOISE_SD times `factors`: for reports noisier than run-to-run noise."""
        gps = [ResidualGP(self.gp.length_scales, NOISE_SD * f).fit(self.gp.x_, self.gp.y_)
               for f in factors]  # the same residuals: the model is not asked again
        fitted = copy.copy(self)
        fitted.gp = max(gps, key=ResidualGP.log_marginal_likelihood)
        return fitted

    def queries(self, params: Params) -> RunTable:
        return RunTable.queries(self.spec, *(params[n] for n in HYPERPARAMETERS))

    def prior(self, params: Params) -> np.ndarray:
        """ln of the model's mean loss."""
        return np.log(self.model.predict(self.queries(params)).mean)

    def predict(self, params: Params) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and sd of ln(loss)."""
        mean, sd = self.gp.predict(self.space.encode(params))
        return self.prior(params) + mean, sd

    def with_believers(self) -> "ConditionedModel":
        """Pending trials as if they had returned the posterior mean at their configuration
        (kriging believer): the variance there collapses, so concurrent asks spread out."""
        if not self.trials.n_pending:
            return self
        believed, _ = self.predict(self.trials.pending)
        trials = StudyTrials(
            completed={n: np.concatenate([self.trials.completed[n], self.trials.pending[n]])
                       for n in HYPERPARAMETERS},
            ln_loss=np.concatenate([self.trials.ln_loss, believed]),
            diverged=self.trials.diverged, pending=_stack([]))
        return ConditionedModel(self.model, self.spec, self.space, trials)

    def lr_ok(self, params: Params, slack: float = 1.0) -> np.ndarray:
        """Below the model's lr limit times `slack` (when it has one and lr is free), and not at
        or above the lr of a diverged trial at a similar batch."""
        ok = np.ones(len(params["lr"]), bool)
        if "lr" not in self.space.free:
            return ok
        limit = getattr(self.model, "lr_limit", None)
        if limit is not None:
            ok &= params["lr"] <= slack * limit(self.queries(params))
        div = self.trials.diverged
        for lr, batch in zip(div["lr"], div["batch_size_tokens"]):
            similar = np.abs(np.log(params["batch_size_tokens"] / batch)) <= SIMILAR_BATCH
            ok &= ~(similar & (params["lr"] >= lr * (1 - 1e-9)))
        return ok
