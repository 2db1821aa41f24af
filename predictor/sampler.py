"""An Optuna sampler guided by the predictor: expected improvement of the tenant's loss model
conditioned on the study's trials (predictor/conditioned.py).

- No completed or running trial yet: the exploit recommendation (`first`; without one, the
  centre of the space, which is where the service puts the recommendation).
- Otherwise the candidate with the largest expected improvement over the best posterior mean at
  a tried configuration. Candidates: a scrambled Sobol set over the space, and Gaussian
  perturbations around the incumbent and around `first`. Excluded: lr at or above a diverged
  trial's at a similar batch, lr above EXPLORE_LR_SLACK x the model's lr limit, and anything
  within MIN_DISTANCE (in length scales) of a trial already run or running: closer than ~20% in
  lr and batch the loss differs by less than run-to-run noise near the optimum.
- Running trials count as observations at their posterior mean (kriging believer), so
  concurrent asks (serialised by the caller's per-study lock) get distinct suggestions.

The constants are fixed in advance, like those of the GP.
"""

import hashlib

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import Study
from optuna.trial import FrozenTrial
from scipy.stats import norm, qmc

from benchmark_db.records import TrainingSpec
from predictor.conditioned import (LENGTH_SCALE, ConditionedModel, Params, StudyTrials,
                                  squared_distances)
from predictor.loss_model import LossModel
from predictor.recommendation import HYPERPARAMETERS
from predictor.study import SearchSpace

SOBOL_POINTS = 512
LOCAL_POINTS = 256
LOCAL_SD = 0.35  # in length scales: about one step of a sqrt(2) grid in lr
MIN_DISTANCE = 0.2
EXPLORE_LR_SLACK = 2.0  # explore up to 2x the lr limit a recommendation keeps (lr_div / 1.5)


def expected_improvement(best: float, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    z = (best - mean) / sd
    return (best - mean) * norm.cdf(z) + sd * norm.pdf(z)


def candidates(space: SearchSpace, centres: list[np.ndarray], rng: np.random.Generator,
               sobol: int = SOBOL_POINTS, local: int = LOCAL_POINTS, sd: float = LOCAL_SD) -> Params:
    """Quasi-random points over the space and Gaussian clouds (sd in length scales) around each
    centre (search coordinates), as hyperparameters inside the space."""
    lo, hi = space.box()
    d = len(lo)
    if d == 0:
        return space.decode(np.zeros((1, 0)))
    scale = np.array([LENGTH_SCALE[n] for n in space.free])
    points = [np.array(centres).reshape(-1, d)]
    if sobol:
        points.append(lo + (hi - lo) * qmc.Sobol(d, scramble=True, seed=rng).random(sobol))
    for centre in centres:
        points.append(centre + sd * scale * rng.standard_normal((local // max(1, len(centres)), d)))
    return space.decode(np.clip(np.vstack(points), lo, hi))


def distance_to(space: SearchSpace, params: Params, others: Params) -> np.ndarray:
    """Scaled distance of each configuration to the nearest of `others` (inf if none)."""
    if not len(others["lr"]) or not space.free:
        return np.full(len(params["lr"]), np.inf)
    scale = np.array([LENGTH_SCALE[n] for n in space.free])
    a, b = space.encode(params) / scale, space.encode(others) / scale
    return np.sqrt(squared_distances(a, b)).min(1)


def _take(params: Params, i) -> Params:
    return {n: params[n][i] for n in params}


class PredictorGuidedSampler(BaseSampler):
    """Samples the free hyperparameters of `space` jointly (relative sampling); anything else
    a define-by-run objective asks for is sampled at random."""

    def __init__(self, model: LossModel, spec: TrainingSpec, space: SearchSpace,
                 first: dict[str, float] | None = None, seed: int | None = None):
        self.model = model
        self.spec = spec
        self.space = space
        self.first = first
        self.seed = seed
        self._fallback = RandomSampler(seed=seed)

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        dists = self.space.distributions()
        return {n: dists[n] for n in self.space.free}

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, float]:
        if not search_space:
            return {}
        trials = StudyTrials.of(study.get_trials(deepcopy=False), exclude=trial.number)
        chosen = self.suggest(trials, self._rng(study, trial))
        return {n: float(chosen[n][0]) for n in search_space}

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution):
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    def suggest(self, trials: StudyTrials, rng: np.random.Generator) -> Params:
        """The next configuration (arrays of length 1)."""
        model = ConditionedModel(self.model, self.spec, self.space, trials)
        first = self._first()
        if not trials.n_completed and not trials.n_pending:
            if model.lr_ok(first, EXPLORE_LR_SLACK)[0]:
                return first
            pool = candidates(self.space, [self.space.encode(first)[0]], rng)
            mean, _ = model.predict(pool)
            mean = np.where(model.lr_ok(pool, EXPLORE_LR_SLACK), mean, np.inf)
            return _take(pool, [int(np.argmin(mean))])
        believer = model.with_believers()
        tried = believer.trials.completed
        tried_mean, _ = believer.predict(tried)
        best = float(tried_mean.min())
        incumbent = space_point(self.space, tried, int(np.argmin(tried_mean)))
        pool = candidates(self.space, [incumbent, self.space.encode(first)[0]], rng)
        mean, sd = believer.predict(pool)
        ei = expected_improvement(best, mean, sd)
        every = {n: np.concatenate([tried[n], trials.diverged[n]]) for n in HYPERPARAMETERS}
        ok = model.lr_ok(pool, EXPLORE_LR_SLACK)
        far = distance_to(self.space, pool, every) >= MIN_DISTANCE
        for allowed in (ok & far, ok, np.ones_like(ok)):  # relax only if nothing is left
            if allowed.any():
                return _take(pool, [int(np.argmax(np.where(allowed, ei, -np.inf)))])
        raise AssertionError("unreachable")

    def _first(self) -> Params:
        if self.first is not None:
            return self.space.clip({n: np.array([self.first[n]], float) for n in HYPERPARAMETERS})
        lo, hi = self.space.box()
        return self.space.decode(((lo + hi) / 2)[None, :])

    def _rng(self, study: Study, trial: FrozenTrial) -> np.random.Generator:
        """Deterministic per study and trial (and seed), so a suggestion can be reproduced."""
        text = f"{study.study_name}/{trial.number}/{self.seed}".encode()
        return np.random.default_rng(int.from_bytes(hashlib.sha256(text).digest()[:8], "big"))


def space_point(space: SearchSpace, params: Params, i: int) -> np.ndarray:
    return space.encode(_take(params, [i]))[0]

