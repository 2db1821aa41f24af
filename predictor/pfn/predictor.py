"""The PFN as a LossModel (predictor/loss_model.py): fit() stores the runs (those its prior
could have made: features.screen); predict() builds, for each query spec, the context (the
spec's own runs and those of the nearest groups in (ln N, ln active N, ln D), at most
max_context runs) and reads the loss distribution at every query from one forward pass: the
mean, and an 80% interval recalibrated on the stored runs (see PFNLossModel). With no
completed run to condition on, it is the prior.

A recommendation asks several query sets of one spec (predictor/argmin.py: a coarse grid, a
fine grid, the chosen point, the intervals), all against the same context: a fitted model
keeps, per query spec, the encoded context (the network's per-layer keys and values) and the
normalisation the query features are relative to, in a small LRU cache (ContextCache).

torch is imported when a model is first needed, not when this module is imported.
"""

import hashlib
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np

from benchmark_db.records import TrainingSpec
from predictor.intervals import held_out_groups
from predictor.loss_model import LossPrediction
from predictor.pfn.features import (Normalisation, Runs, Spec, context_features, episode,
                                    query_features, screen, select_context, targets)
from predictor.prior_model import PriorLossModel
from predictor.table import RunTable

MAX_CONTEXT = 500
INTERVAL = (0.1, 0.9)
# Interval recalibration needs this many groups with completed runs (and runs in them), and
# uses at most CALIBRATION_MAX_GROUPS of them (evenly spread) to bound the cost of fit().
CALIBRATION_MIN_GROUPS = 3
CALIBRATION_MIN_RUNS = 30
CALIBRATION_MAX_GROUPS = 32
# Query specs whose encoded context a fitted model keeps: a recommendation uses one spec; an
# entry of 500 context runs is about 1 MB (4 layers' keys and values).
CONTEXT_CACHE_SIZE = 8
_LOADED: dict[Path, object] = {}
_LOCK = threading.Lock()


def _calibration_groups(ids: np.ndarray, completed: np.ndarray) -> np.ndarray | None:
    """The groups (of `ids`, one per run) a calibration predicts from the others: those with
    completed runs, at most CALIBRATION_MAX_GROUPS spread evenly; None if too few."""
    groups = np.array([g for g in np.unique(ids) if completed[ids == g].any()])
    if len(groups) < CALIBRATION_MIN_GROUPS:
        return None
    return held_out_groups(groups, CALIBRATION_MAX_GROUPS)


def load_checkpoint(path: Path | None = None):
    """The checkpoint at path (default: the committed one), loaded once per process."""
    from predictor.pfn import checkpoint

    path = Path(path or checkpoint.DEFAULT_CHECKPOINT)
    with _LOCK:
        if path not in _LOADED:
            _LOADED[path] = checkpoint.load(path)
        return _LOADED[path]


def timed_forward(checkpoint, n_context: int = 500, n_queries: int = 1000, seed: int = 0) -> float:
    """Seconds of one full forward pass (the context encoded, then the queries answered) on
    random features with the mean and both interval quantiles, as a prediction with no cached
    context costs: the inference latency the PFN issue sets a target for."""
    import time

    import torch

    cfg = checkpoint.config.model
    gen = torch.Generator().manual_seed(seed)
    ctx = torch.randn(1, n_context, cfg.n_context_features, generator=gen)
    qry = torch.randn(1, n_queries, cfg.n_query_features, generator=gen)
    mask = torch.ones(1, n_context, dtype=torch.bool)
    with torch.inference_mode():
        started = time.perf_counter()
        logits = checkpoint.model(ctx, qry, mask)
        checkpoint.model.bar.mean_exp(logits)
        checkpoint.model.bar.quantile(logits, INTERVAL[0])
        checkpoint.model.bar.quantile(logits, INTERVAL[1])
        return time.perf_counter() - started


def runs_from_table(table: RunTable) -> Runs:
    return Runs(n_params=table.n_params, n_active=table.n_active_params, n_tokens=table.n_tokens,
                bits=table.weight_bits, lr=table.lr, batch=table.batch_size_tokens,
                weight_decay=table.weight_decay, qat=table.qat_fraction, loss=table.loss,
                diverged=table.diverged)


@dataclass(frozen=True)
class EncodedContext:
    """What predict() needs of one query spec's context: the network's encoding of it
    (model.ContextEncoding) and the normalisation query features and losses are relative to."""

    encoding: object
    norm: Normalisation

    def query_inputs(self, queries: Runs, spec: Spec) -> tuple[np.ndarray, np.ndarray]:
        """(query features, query_log_anchor), as features.episode builds them."""
        return query_features(queries, spec, self.norm)


def encode_context(model, runs: Runs, max_context: int, spec: Spec) -> EncodedContext | None:
    """The spec's context (select_context) encoded; None when it has no completed run."""
    import torch

    context = runs.take(select_context(runs, spec, max_context))
    encoded = context_features(context, spec) if len(context) else None
    if encoded is None:
        return None
    features, norm = encoded
    with torch.inference_mode():
        encoding = model.encode_context(torch.from_numpy(features)[None],
                                        torch.ones(1, len(features), dtype=torch.bool))
    return EncodedContext(encoding=encoding, norm=norm)


class CacheInfo(NamedTuple):
    hits: int
    misses: int
    entries: int
    size: int


class ContextCache:
    """Encoded contexts by query spec for one fitted state (its runs, network and context cap,
    bound into `encode`), the least recently used dropped past `size`. Thread-safe: the gRPC
    server predicts from several threads. A miss encodes outside the lock, so other specs are
    not held up; two threads missing the same spec both encode it, to the same result."""

    def __init__(self, encode: Callable[[Spec], EncodedContext | None], size: int = CONTEXT_CACHE_SIZE):
        self._encode = encode
        self.size = size
        self._entries: OrderedDict[Spec, EncodedContext | None] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = self._misses = 0

    def get(self, spec: Spec) -> EncodedContext | None:
        with self._lock:
            if spec in self._entries:
                self._hits += 1
                self._entries.move_to_end(spec)
                return self._entries[spec]
            self._misses += 1
        value = self._encode(spec)
        with self._lock:
            self._entries[spec] = value
            self._entries.move_to_end(spec)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return value

    def info(self) -> CacheInfo:
        with self._lock:
            return CacheInfo(self._hits, self._misses, len(self._entries), self.size)


class PFNLossModel:
    """fit() stores the runs and recalibrates the interval: the PFN's 80% interval is
    calibrated on its prior; on the stored runs, predicting each group from the others (as
    for a new spec), the quantile levels whose interval holds 80% of the completed runs'
    losses are found (quantile recalibration of the probability integral transform). Nothing
    else is fitted: the network conditions on the runs in its forward pass.

    A fitted model does not change (fit() makes a new state, cache included): predict() keeps
    each query spec's encoded context in a ContextCache of context_cache_size specs."""

    name = "pfn"

    def __init__(self, checkpoint_path: str | Path | None = None, max_context: int = MAX_CONTEXT,
                 recalibrate: bool = True, context_cache_size: int = CONTEXT_CACHE_SIZE):
        self.checkpoint_path = checkpoint_path
        self.max_context = max_context
        self.recalibrate = recalibrate
        self.context_cache_size = context_cache_size

    def fit(self, runs: RunTable) -> "PFNLossModel":
        self.checkpoint_ = load_checkpoint(self.checkpoint_path)
        digest = hashlib.sha256()
        for column in (runs.n_params, runs.n_active_params, runs.n_tokens, runs.weight_bits,
                       runs.lr, runs.batch_size_tokens, runs.weight_decay, runs.qat_fraction,
                       runs.loss, runs.diverged):
            digest.update(np.ascontiguousarray(column).tobytes())
        self.data_hash_ = digest.hexdigest()[:12]
        stored = runs_from_table(runs)
        keep, diverged = screen(stored)  # as the network's prior makes runs
        left_out = np.setdiff1d(np.arange(len(stored)), keep)
        self.left_out_ = Counter(Spec(*map(float, key)) for key in stored.spec_keys()[left_out])
        runs = replace(runs, diverged=diverged).subset(keep)
        self.runs_ = replace(stored, diverged=diverged).take(keep)
        self.interval_levels_ = self._calibrated_levels() if self.recalibrate else INTERVAL
        self.optimum_offsets_ = self._held_out_offsets(runs) if self.recalibrate else None
        self._start_context_cache()
        return self

    def _held_out_offsets(self, runs: RunTable) -> np.ndarray | None:
        """(groups, 2): where held-out groups' best runs lay from the recommendation made with
        the other groups as context, as for the surface (predictor/intervals.py): the spread
        of the lr and batch intervals, which the near-optimal band alone made too narrow (the
        best run's lr inside it in 29% of the real sweep's groups, left out in turn)."""
        from predictor.intervals import optimum_offset

        ids = runs.group_ids()
        chosen = _calibration_groups(ids, runs.completed)
        if chosen is None:
            return None
        offsets = []
        for g in chosen:
            train = runs.subset(ids != g)
            inner = PFNLossModel(self.checkpoint_path, self.max_context, recalibrate=False,
                                 context_cache_size=1).fit(train)
            offsets.append(optimum_offset(inner, train, runs.subset(ids == g)))
        return np.array(offsets)

    def held_out_optimum_offsets(self) -> np.ndarray | None:
        return self.optimum_offsets_

    def spec_warnings(self, spec: TrainingSpec) -> list[str]:
        """Says so when the runs stored at the spec itself were left out (features.screen)."""
        count = self.left_out_[Spec(float(spec.n_params), float(spec.n_active_params),
                                    float(spec.n_tokens), float(spec.weight_bits))]
        if not count:
            return []
        return [f"pfn: the {count} run(s) stored at this spec are left out of its context: their "
                "best loss is over 1.5x off the other sizes' (each relative to the published "
                "laws), which the pfn takes for another corpus or a mistake"]

    def _start_context_cache(self) -> None:
        self.contexts_ = ContextCache(partial(encode_context, self.checkpoint_.model, self.runs_,
                                              self.max_context), self.context_cache_size)

    def context_cache_info(self) -> CacheInfo:
        return self.contexts_.info()

    def __getstate__(self) -> dict:
        """Pickled (a refit's result, sent from its process) without the network and the
        context cache: the receiving process loads the checkpoint once and starts empty."""
        state = dict(self.__dict__)
        for rebuilt in ("checkpoint_", "contexts_"):
            state.pop(rebuilt, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if "runs_" in state:  # fitted
            self.checkpoint_ = load_checkpoint(self.checkpoint_path)
            self._start_context_cache()

    @property
    def version_(self) -> str:
        return f"{self.checkpoint_.version}:ctx{self.max_context}:runs-{self.data_hash_}"

    def _forward(self, context: Runs, queries: Runs, spec: Spec):
        """(logits, episode) of the full forward pass, or None when the context has no
        completed run. For the recalibration's contexts (the stored runs less one group), which
        predict() never sees: not cached."""
        import torch

        ep = episode(context, queries, spec) if len(context) else None
        if ep is None:
            return None
        model = self.checkpoint_.model
        with torch.inference_mode():
            logits = model(torch.from_numpy(ep.context)[None], torch.from_numpy(ep.queries)[None],
                           torch.ones(1, len(ep.context), dtype=torch.bool))[0]
        return logits, ep

    def _calibrated_levels(self) -> tuple[float, float]:
        import torch

        runs = self.runs_
        unique, inverse = np.unique(runs.spec_keys(), axis=0, return_inverse=True)
        inverse = inverse.ravel()
        chosen = _calibration_groups(inverse, runs.completed)
        if chosen is None:
            return INTERVAL
        pits = []
        for k in chosen:
            held = inverse == k
            others = runs.take(np.flatnonzero(~held))
            spec = Spec(*map(float, unique[k]))
            queries = runs.take(np.flatnonzero(held & runs.completed))
            out = self._forward(others.take(select_context(others, spec, self.max_context)), queries, spec)
            if out is None:
                continue
            logits, ep = out
            y = torch.from_numpy(targets(queries, ep))
            pits.append(self.checkpoint_.model.bar.cdf(logits, y).numpy())
        if not pits or sum(map(len, pits)) < CALIBRATION_MIN_RUNS:
            return INTERVAL
        pit = np.concatenate(pits)
        lo, hi = np.quantile(pit, INTERVAL)
        return float(np.clip(lo, 0.001, 0.5)), float(np.clip(hi, 0.5, 0.999))

    def mean(self, queries: RunTable) -> np.ndarray:
        """predict(queries).mean without the interval's quantiles: what the argmin's grids
        need (predictor/argmin.py)."""
        return self._predict(queries, interval=False)[0]

    def predict(self, queries: RunTable) -> LossPrediction:
        mean, lo, hi = self._predict(queries, interval=True)
        # The mean counts the chance of divergence; where that pulls it past the interval,
        # the interval is widened to hold it (LossPrediction: lo <= mean <= hi).
        return LossPrediction(mean=mean, lo=np.minimum(lo, mean), hi=np.maximum(hi, mean))

    def _predict(self, queries: RunTable, interval: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean, lo, hi); lo and hi stay NaN unless `interval`."""
        import torch

        model = self.checkpoint_.model
        contexts = self.contexts_
        q_runs = runs_from_table(queries)
        mean = np.empty(len(queries))
        lo, hi = np.full(len(queries), np.nan), np.full(len(queries), np.nan)
        keys = np.stack([queries.n_params, queries.n_active_params, queries.n_tokens,
                         queries.weight_bits], axis=1)
        unique, inverse = np.unique(keys, axis=0, return_inverse=True)
        fallback = None
        for k, key in enumerate(unique):
            rows = np.flatnonzero(inverse.ravel() == k)
            spec = Spec(*map(float, key))
            encoded = contexts.get(spec)
            if encoded is None:  # nothing completed to condition on: the prior
                fallback = fallback or PriorLossModel()
                p = fallback.predict(queries.subset(rows))
                mean[rows], lo[rows], hi[rows] = p.mean, p.lo, p.hi
                continue
            features, log_anchor = encoded.query_inputs(q_runs.take(rows), spec)
            with torch.inference_mode():
                logits = model.answer(torch.from_numpy(features)[None], encoded.encoding)[0]
            scale = np.exp(log_anchor)
            mean[rows] = model.bar.mean_exp(logits).numpy() * scale
            if interval:
                lo[rows] = np.exp(model.bar.quantile(logits, self.interval_levels_[0]).numpy()) * scale
                hi[rows] = np.exp(model.bar.quantile(logits, self.interval_levels_[1]).numpy()) * scale
        return mean, lo, hi
