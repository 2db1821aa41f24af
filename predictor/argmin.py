"""Recommendations from any fitted LossModel: the argmin of its predicted loss over the free
hyperparameters, searched on a log grid around the prior's (conditional) optimum.

Weight decay, when free, follows the prior's timescale rule at each candidate (lr, batch):
no stored sweep varies it enough to learn more, and the rule re-centres the AdamW timescale.
The QAT fraction, when free, is the prior's. The lr and batch intervals span the 10th-90th
percentiles of the optimum's location about the argmin, the wider of two spreads when the
model has them: its bootstrap draws, and where held-out groups' best runs lay from the
recommendation made without them. Without either, the band over which the predicted loss
stays within NEAR_OPTIMAL_EXCESS of its minimum. A model with an `lr_limit` (the surface's
divergence boundary over a safety factor) bounds the free learning rate.
"""

import math

import numpy as np

from benchmark_db.records import Pins, TrainingSpec
from predictor import laws
from predictor.loss_model import LossModel
from predictor.prior import NEAR_OPTIMAL_EXCESS, LawOptimum, PriorRecommender, check_pins
from predictor.recommendation import Interval, Recommendation, Source, whole_sequences
from predictor.table import RunTable

# How far past the swept sizes the lr and batch intervals take in all of the published laws'
# (a sudden hull at the edge moved an end by 36% across a 0.5% step in size).
PRIOR_HULL_DISTANCE = math.log(2.0)
SEARCH_HALF_WIDTH = math.log(30.0)  # the grid spans the prior optimum /30 to x30
COARSE_POINTS = 35  # steps of 0.2 in ln
FINE_POINTS = 21  # steps of 0.02 in ln, one coarse step either side


class ModelRecommender:
    def __init__(self, model: LossModel, runs: RunTable):
        self.model = model
        self.n_runs = len(runs)
        self._prior = PriorRecommender()
        swept = runs.swept()  # where the learned optimum is trusted (RunTable.swept)
        sizes = {"n_active_params": swept.n_active_params, "n_tokens": swept.n_tokens,
                 "tokens_per_param": swept.n_tokens / swept.n_active_params}
        self._sizes = {c: (v.min(), v.max()) if len(swept) else None for c, v in sizes.items()}
        self._pin_spans = _swept_log_ratios(swept)
        # The sparsest mixture of experts stored (1: dense runs only).
        self._sparsity = float((runs.n_params / runs.n_active_params).max()) if len(runs) else None

    def recommend(self, spec: TrainingSpec, pins: Pins) -> Recommendation:
        check_pins(spec, pins)
        # One divergence warning, from the model that sets the lr limit (two disagreed).
        base = self._prior.recommend(spec, pins,
                                     warn_divergence=not hasattr(self.model, "lr_limit"))
        lr_axis = _axis(base.lr, pins.lr)
        batch_axis = _axis(base.batch_size_tokens, pins.batch_size_tokens)
        lr, batch = self._best(spec, pins, base, self.model, lr_axis, batch_axis)
        # Refine on a finer grid one coarse step around the coarse optimum.
        step = 2 * SEARCH_HALF_WIDTH / (COARSE_POINTS - 1)
        fine_lr = _axis(lr, pins.lr, step, FINE_POINTS)
        fine_batch = _axis(batch, pins.batch_size_tokens, step, FINE_POINTS)
        lr, batch = self._best(spec, pins, base, self.model, fine_lr, fine_batch)
        if pins.batch_size_tokens is None:
            batch = whole_sequences(batch, spec.seq_len)
        wd = free_weight_decay(spec, pins, lr, batch)
        prediction = self.model.predict(RunTable.queries(spec, lr, batch, wd, base.qat_fraction))

        lr_interval, batch_interval = self._intervals(spec, pins, base, lr, batch, fine_lr, fine_batch)
        wd_interval = base.weight_decay_interval if pins.weight_decay is not None else Interval(
            lo=wd * base.weight_decay_interval.lo / base.weight_decay,
            hi=wd * base.weight_decay_interval.hi / base.weight_decay)
        return base.model_copy(update={
            "lr": lr, "lr_interval": lr_interval,
            "batch_size_tokens": batch, "batch_size_tokens_interval": batch_interval,
            "weight_decay": wd, "weight_decay_interval": wd_interval,
            "predicted_loss": float(prediction.mean[0]),
            "predicted_loss_interval": Interval(lo=float(prediction.lo[0]), hi=float(prediction.hi[0])),
            "sources": tuple(self._sources(base, pins)),
            "warnings": (base.warnings + tuple(self._range_warnings(spec))
                         + tuple(getattr(self.model, "spec_warnings", lambda _: [])(spec))
                         + tuple([] if pins.weight_decay is not None else
                                 laws.clamped_weight_decay_warnings(spec, lr, batch))
                         + tuple(self._lr_limit_warnings(spec, pins, lr, batch, wd)
                                 or self._pin_span_warnings(spec, pins))),
            "model_versions": (self.model.version_,) + base.model_versions,
        })

    def _queries(self, spec, pins, base, lr_axis, batch_axis) -> tuple[RunTable, np.ndarray, np.ndarray]:
        lr, batch = (a.ravel() for a in np.meshgrid(lr_axis, batch_axis, indexing="ij"))
        wd = free_weight_decay(spec, pins, lr, batch)
        return RunTable.queries(spec, lr, batch, wd, base.qat_fraction), lr, batch

    def _best(self, spec, pins, base, model, lr_axis, batch_axis) -> tuple[float, float]:
        queries, lr, batch = self._queries(spec, pins, base, lr_axis, batch_axis)
        loss = self._safe_mean(model, queries, pins)
        i = int(np.argmin(loss))
        return float(lr[i]), float(batch[i])

    @staticmethod
    def _safe_mean(model, queries: RunTable, pins: Pins) -> np.ndarray:
        """Predicted loss, infinite where the model says the lr is too close to divergence
        (unless the caller pinned the lr: then it is theirs to choose)."""
        mean = model.mean(queries) if hasattr(model, "mean") else model.predict(queries).mean
        limit = getattr(model, "lr_limit", None)
        if limit is None or pins.lr is not None:
            return mean
        return np.where(queries.lr <= limit(queries), mean, np.inf)

    def _intervals(self, spec, pins, base, lr, batch, lr_axis, batch_axis) -> tuple[Interval, Interval]:
        spreads = [s for s in self._optimum_spreads(spec) if s is not None and len(s)]
        if spreads:  # the widest of the 10th-90th percentiles of each spread, about the argmin
            lo_off = np.min([np.percentile(s, 10, axis=0) for s in spreads] + [np.zeros(2)], axis=0)
            hi_off = np.max([np.percentile(s, 90, axis=0) for s in spreads] + [np.zeros(2)], axis=0)
            lo = [lr * math.exp(lo_off[0]), batch * math.exp(lo_off[1])]
            hi = [lr * math.exp(hi_off[0]), batch * math.exp(hi_off[1])]
        else:
            queries, lrs, batches = self._queries(spec, pins, base, lr_axis, batch_axis)
            mean = self._safe_mean(self.model, queries, pins)
            near = mean <= mean.min() * (1 + NEAR_OPTIMAL_EXCESS)
            lo = [lrs[near].min(), batches[near].min()]
            hi = [lrs[near].max(), batches[near].max()]
        lr_iv = Interval.point(lr) if pins.lr is not None else Interval(lo=lo[0], hi=hi[0])
        batch_iv = (Interval.point(batch) if pins.batch_size_tokens is not None
                    else Interval(lo=lo[1], hi=hi[1]))
        # Past the swept sizes the learned optimum extrapolates, and its spreads know nothing
        # of how far: the published laws' uncertainty (widened further out) stands too, taken
        # in gradually (all of it PRIOR_HULL_DISTANCE out), so the ends do not jump at the edge.
        weight = min(1.0, self._distance_outside(spec) / PRIOR_HULL_DISTANCE)
        if weight > 0 and pins.lr is None:
            lr_iv = _towards_hull(lr_iv, base.lr_interval, weight)
        if weight > 0 and pins.batch_size_tokens is None:
            batch_iv = _towards_hull(batch_iv, base.batch_size_tokens_interval, weight)
        return lr_iv, batch_iv

    def _optimum_spreads(self, spec: TrainingSpec) -> list[np.ndarray | None]:
        """(k, 2) offsets of ln lr and ln B about the argmin, each a spread of where the
        optimum lies: the model's bootstrap draws (how well the stored runs pin its fit down),
        and where held-out groups' best runs lay from the recommendation made without them
        (how far off a recommendation for a new spec is: the bootstrap alone covered the best
        run's lr in 2 of 17 real groups)."""
        model = self.model
        return [getattr(model, "optimum_log_offsets", lambda *_: None)(spec.n_active_params,
                                                                        spec.n_tokens),
                getattr(model, "held_out_optimum_offsets", lambda: None)()]

    def _sources(self, base: Recommendation, pins: Pins) -> list[Source]:
        learned = Source(field="", name=self.model.name, version=self.model.version_,
                         detail=f"argmin of the {self.model.name} model fitted on {self.n_runs} runs")
        out = []
        for field in ("lr", "batch_size_tokens", "predicted_loss"):
            if getattr(pins, field, None) is not None:
                out += [s for s in base.sources if s.field == field]
            else:
                out.append(learned.model_copy(update={"field": field}))
        out += [s for s in base.sources if s.field in ("weight_decay", "qat_fraction")]
        return out

    def _lr_limit_warnings(self, spec, pins, lr, batch, wd) -> list[str]:
        """A pinned lr above the model's limit (the argmin never goes there on its own)."""
        limit = getattr(self.model, "lr_limit", None)
        if limit is None or pins.lr is None:
            return []
        at = float(limit(RunTable.queries(spec, lr, batch, wd, 0.0))[0])
        if lr <= at:
            return []
        return [f"lr = {lr:g} is above the {self.model.name} model's limit at this batch "
                f"({at:.3g}, a safety factor below where it expects runs to diverge): the run "
                "may diverge, and the loss predicted for it is an extrapolation"]

    def _pin_span_warnings(self, spec: TrainingSpec, pins: Pins) -> list[str]:
        """A pinned lr or batch farther from the laws' optimum than any stored run was from its
        own: the loss predicted there follows a flank no run measured."""
        out = []
        if pins.lr is None and pins.batch_size_tokens is None:
            return out
        optimum = LawOptimum(spec).values
        for name, span in self._pin_spans.items():
            value = getattr(pins, name)
            if value is None or span is None:
                continue
            ratio = value / optimum[name]
            if not span[0] * (1 - 1e-9) <= ratio <= span[1] * (1 + 1e-9):
                out.append(f"{self.model.name}: pinned {name} = {value:.3g} is {ratio:.3g}x the "
                           f"published laws' optimum, and the stored sweeps ran {span[0]:.3g}x to "
                           f"{span[1]:.3g}x of theirs: the loss predicted for it is an "
                           "extrapolation")
        return out

    def _outside_stored_sizes(self, spec: TrainingSpec) -> list[tuple[str, float, tuple]]:
        """(column, value, swept range) of each size of the spec outside the swept runs'."""
        out = []
        for column, value in (("n_active_params", spec.n_active_params), ("n_tokens", spec.n_tokens),
                              ("tokens_per_param", spec.tokens_per_param)):
            bounds = self._sizes[column]
            if bounds and not bounds[0] <= value <= bounds[1]:
                out.append((column, value, bounds))
        return out

    def _distance_outside(self, spec: TrainingSpec) -> float:
        """How far (in ln) the spec's farthest size lies beyond the swept ones (0 within)."""
        return max((math.log(max(bounds[0] / value, value / bounds[1]))
                    for _, value, bounds in self._outside_stored_sizes(spec)), default=0.0)

    def _range_warnings(self, spec: TrainingSpec) -> list[str]:
        out = []
        for column, value, bounds in self._outside_stored_sizes(spec):
            out.append(f"{self.model.name}: {column} = {value:.3g} is outside the stored runs' "
                       f"sweeps ({bounds[0]:.3g} to {bounds[1]:.3g}); the learned correction is "
                       "an extrapolation, and the lr and batch intervals take in the published "
                       "laws' too")
        sparsity = spec.n_params / spec.n_active_params
        if self._sparsity is not None and sparsity > 1.01 * self._sparsity:
            out.append(f"{self.model.name}: n_params / n_active_params = {sparsity:.3g} is sparser "
                       f"than any stored run ({self._sparsity:.3g} at most); how the loss level "
                       "follows the inactive experts is an extrapolation")
        return out


def _swept_log_ratios(swept: RunTable) -> dict[str, tuple[float, float] | None]:
    """For lr and batch: the range of a swept run's value over its group's published-law
    optimum (the coordinates the learned models work in); None without swept runs."""
    spans: dict[str, tuple[float, float] | None] = {"lr": None, "batch_size_tokens": None}
    if not len(swept):
        return spans
    ids = swept.group_ids()
    first = np.unique(ids, return_index=True)[1]
    optima = [LawOptimum(TrainingSpec.of_sizes(swept.n_params[i], swept.n_active_params[i],
                                               swept.n_tokens[i], swept.seq_len[i],
                                               swept.weight_bits[i])).values for i in first]
    for name, column in (("lr", swept.lr), ("batch_size_tokens", swept.batch_size_tokens)):
        ratio = column / np.array([o[name] for o in optima])[ids]
        spans[name] = (float(ratio.min()), float(ratio.max()))
    return spans


def _towards_hull(ours: Interval, laws_: Interval, weight: float) -> Interval:
    """ours, each end moved (in ln) `weight` of the way to the hull of ours and the laws'."""
    return Interval(lo=ours.lo ** (1 - weight) * min(ours.lo, laws_.lo) ** weight,
                    hi=ours.hi ** (1 - weight) * max(ours.hi, laws_.hi) ** weight)


def free_weight_decay(spec: TrainingSpec, pins: Pins, lr, batch):
    """The weight decay at each (lr, batch): the pinned one, else the timescale rule's."""
    if pins.weight_decay is not None:
        return np.full(np.shape(lr), pins.weight_decay) if np.ndim(lr) else pins.weight_decay
    return laws.timescale_weight_decay(spec, lr, batch)


def _axis(centre: float, pinned: float | None, step: float | None = None,
          points: int = COARSE_POINTS) -> np.ndarray:
    """A log-spaced axis around centre, or just the pinned value."""
    if pinned is not None:
        return np.array([pinned])
    half = SEARCH_HALF_WIDTH if step is None else step
    return centre * np.exp(np.linspace(-half, half, points))
