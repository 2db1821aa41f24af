"""The domain operations the service exposes: one call per RPC."""

import threading
import time
import uuid
import weakref
from collections import OrderedDict
from typing import NamedTuple

import numpy as np

from benchmark_db.records import STORED, Pins, RunRecord, RunReport, TrainingSpec, check_run_id
from benchmark_db.run_recommendations import request_key
from benchmark_db.store import RunStore
from predictor import laws
from predictor.loss_model import LossPrediction
from predictor.prior import PriorRecommender
from predictor.prior_model import PriorLossModel
from predictor.recommendation import HYPERPARAMETERS, Interval, Recommendation, within_feasible
from predictor.registry import ModelRegistry
from predictor.table import RunTable


class Reported(NamedTuple):
    """What ReportRun answers: the stored run (the first one, if run_id was known), whether
    this report stored it, and warnings for the reporter (Refiner.tell)."""

    run: RunRecord
    created: bool
    warnings: tuple[str, ...] = ()
    differing_fields: tuple[str, ...] = ()  # a reused run_id: what this report says otherwise


class RecommendationEngine:
    """Recommends from the tenant's current learned model (the published-law prior until it
    has runs) and stores what runs report back, scheduling a refit on each new run."""

    def __init__(self, store: RunStore, registry: ModelRegistry, refiner=None,
                 cache_seconds: float = 0.0):
        self.store = store
        self.registry = registry
        self.prior = PriorRecommender()
        self.refiner = refiner  # predictor/refine.py: the studies of EXPLORE; None: exploit only
        self.cache = RecommendationCache(cache_seconds) if cache_seconds > 0 else None

    def recommend(self, tenant: str, spec: TrainingSpec, pins: Pins,
                  run_id: str = "") -> Recommendation:
        """The exploit recommendation; for a run_id, the one first given for it (and this spec
        and pins): a job resumed under it trains on with the values it started with, though
        the models were refitted meanwhile."""
        if run_id:
            return self._for_run(tenant, spec, pins, check_run_id(run_id))
        if self.cache is None:
            return self._recommend(tenant, spec, pins)
        stamp = self.cache.stamp(tenant, self.registry.get(tenant))  # before computing: see stamp()
        return self.cache.get_or_compute((tenant, spec, pins), stamp,
                                         lambda: self._recommend(tenant, spec, pins))

    def _for_run(self, tenant: str, spec: TrainingSpec, pins: Pins, run_id: str) -> Recommendation:
        kept_ones = self.store.run_recommendations
        key = request_key(spec.model_dump(mode="json"), pins.model_dump(mode="json"))
        kept = kept_ones.get(tenant, run_id, key)
        if kept is None:  # the first ask for the run: what anyone would be given now
            fresh = self.recommend(tenant, spec, pins).model_dump(mode="json")
            kept = kept_ones.keep(tenant, run_id, key, fresh)
        return Recommendation.model_validate(kept, context=STORED)

    def _recommend(self, tenant: str, spec: TrainingSpec, pins: Pins) -> Recommendation:
        rec = self._model_recommendation(tenant, spec, pins)
        kept = within_feasible(rec)
        if any(getattr(kept, n) != getattr(rec, n) for n in HYPERPARAMETERS):
            # The models' loss was that of the optimum they asked for, not of what is kept.
            _, loss, _ = self.predict_loss(tenant, spec, *(np.array([getattr(kept, n)], float)
                                                          for n in HYPERPARAMETERS))
            kept = kept.model_copy(update={
                "predicted_loss": float(loss.mean[0]),
                "predicted_loss_interval": Interval(lo=float(loss.lo[0]), hi=float(loss.hi[0]))})
        return kept

    def _model_recommendation(self, tenant: str, spec: TrainingSpec, pins: Pins) -> Recommendation:
        if self.refiner is not None:  # conditioned on the spec's study once it has trials
            return self.refiner.exploit(tenant, spec, pins)
        predictor = self.registry.get(tenant)
        if predictor is None:
            return self.prior.recommend(spec, pins)
        return predictor.recommend(spec, pins)

    def predict_loss(self, tenant: str, spec: TrainingSpec, lr: np.ndarray, batch_size_tokens: np.ndarray,
                     weight_decay: np.ndarray, qat_fraction: np.ndarray
                     ) -> tuple[RunTable, LossPrediction, tuple[str, ...]]:
        """Loss at each point; NaN weight decay follows the timescale rule at the point's lr and
        batch, NaN QAT fraction is the law's. Returns the completed points too. Once the spec
        has a study with completed trials, the model conditioned on them (what the exploit
        recommendation knows: see Refiner.predict_loss)."""
        timescale_wd = laws.timescale_weight_decay(spec, lr, batch_size_tokens)
        queries = RunTable.queries(
            spec, lr, batch_size_tokens,
            np.where(np.isnan(weight_decay), timescale_wd, weight_decay),
            np.where(np.isnan(qat_fraction), laws.DREMOV_QAT(spec), qat_fraction))
        if self.refiner is not None:
            conditioned = self.refiner.predict_loss(tenant, spec, queries)
            if conditioned is not None:
                return queries, *conditioned
        predictor = self.registry.get(tenant)
        model = predictor.model if predictor is not None else PriorLossModel()
        return queries, model.predict(queries), (model.version_,)

    def explore(self, tenant: str, spec: TrainingSpec, pins: Pins, run_id: str = "") -> Recommendation:
        """The next trial of the spec's study (Recommendation.trial_id set), or the one handed
        out before for run_id (Refiner.explore)."""
        if self.refiner is None:
            raise NotImplementedError("explore needs a refiner (predictor/refine.py)")
        try:
            # The trial's values are in its space, which is feasible: only intervals can move.
            return within_feasible(self.refiner.explore(tenant, spec, pins, run_id))
        finally:
            self._changed(tenant)

    def give_back(self, tenant: str, trial_id: str) -> None:
        """An explore trial nobody received (TrialTimeouts.give_back)."""
        try:
            self.refiner.timeouts.give_back(tenant, trial_id)
        finally:
            self._changed(tenant)

    def heartbeat(self, tenant: str, trial_id: str, interval_seconds: float = 0.0):
        """The run of an explore trial is still going (TrialTimeouts.heartbeat): a TrialStatus. The
        cached recommendations stay valid: a heartbeat changes nothing they depend on."""
        if self.refiner is None:
            raise NotImplementedError("heartbeats need a refiner (predictor/refine.py)")
        return self.refiner.timeouts.heartbeat(tenant, trial_id, interval_seconds)

    def report(self, tenant: str, report: RunReport) -> "Reported":
        if self.refiner is not None:  # an unknown trial_id is refused before anything is stored
            self.refiner.check_report(tenant, report)
        run, created = self.store.report(tenant, report)
        if created:
            self.registry.schedule_refit(tenant)
        warnings, changed = [], []
        if not created and (changed := run.differs_from(report)):
            warnings.append(
                f"run {run.run_id!r} was stored before with other values ({', '.join(changed)}), "
                "which are kept: this report was not stored; give each run its own run_id")
        if not created and report.trial_id and report.trial_id != run.trial_id:
            stored = f"against trial {run.trial_id}" if run.trial_id else "without a trial"
            warnings.append(
                f"run {run.run_id!r} was stored before {stored}: this report did not close trial "
                f"{report.trial_id}; report that trial's run under its own run_id")
        try:
            if self.refiner is not None:  # idempotent: a re-sent run is not told twice
                warnings += self.refiner.tell(tenant, run)
        finally:
            # Also when the tell failed (the run is stored, and the study's next sync tells
            # it), and for a re-sent run, which may be told only now if its first tell failed.
            if created or self.refiner is not None:
                self._changed(tenant)
        return Reported(run, created, tuple(warnings), tuple(changed))

    def _changed(self, tenant: str) -> None:
        """The tenant's studies changed: its cached recommendations are stale."""
        if self.cache is not None:
            self.cache.invalidate(tenant)


class RecommendationCache:
    """Recent recommendations by (tenant, spec, pins), so a launcher fleet asking for the same
    spec does not recompute the same argmin. An entry serves only while the tenant's model is
    the one it was computed with and nothing was reported or explored through this process
    since (the exploit recommendation is conditioned on the spec's study); runs reported
    through another replica reach its studies directly, so entries also expire after
    `ttl_seconds`, the most a replica's answer can lag. Concurrent misses of one key compute
    it once (the others wait for that result); when an entry only aged out, the others get it
    while one call refreshes it, so the fleet does not stall every ttl_seconds. Each answer is
    a copy with its own recommendation_id."""

    # An entry (a Recommendation with its key) holds ~10 KB. The launchers of a fleet ask for
    # a few specs; 2,048 entries outlast the ttl at the varied-spec load benchmark's rate
    # (~250 distinct specs/s over 5 s) in ~20 MB.
    def __init__(self, ttl_seconds: float, max_entries: int = 2_048, clock=time.monotonic):
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self._clock = clock  # seconds; a test's own clock, so its ttl need not race the machine
        self._entries: OrderedDict[tuple, tuple[tuple, float, Recommendation]] = OrderedDict()
        self._flights: dict[tuple, _Flight] = {}
        self._epochs: dict[str, int] = {}
        self._lock = threading.Lock()

    def stamp(self, tenant: str, predictor) -> tuple:
        """What a recommendation computed now depends on. Taken before computing, so one that
        overlaps a report or a model swap is stored already stale, never served as fresh."""
        return (self._epochs.get(tenant, 0), None if predictor is None else weakref.ref(predictor))

    def get_or_compute(self, key: tuple, stamp: tuple, compute) -> Recommendation:
        hit = None
        with self._lock:
            entry = self._entries.get(key)
            flight = self._flights.get(key)
            if entry is not None and entry[0] == stamp and (
                    entry[1] >= self._clock() or (flight is not None and flight.stamp == stamp)):
                self._entries.move_to_end(key)
                hit = entry[2]  # fresh, or aged out and being refreshed
            else:
                leader = flight is None or flight.stamp != stamp
                if leader:
                    flight = self._flights[key] = _Flight(stamp)
        if hit is not None:
            return _fresh_id(hit)
        if not leader:
            flight.done.wait()
            if flight.result is not None:
                return _fresh_id(flight.result)
            return compute()  # the leader failed: fail (or not) on our own
        try:
            flight.result = compute()
            with self._lock:
                now = self._clock()
                self._entries[key] = (stamp, now + self.ttl_seconds, flight.result)
                self._entries.move_to_end(key)
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
                self._drop_expired(now)
            return flight.result
        finally:
            with self._lock:
                if self._flights.get(key) is flight:
                    del self._flights[key]
            flight.done.set()

    def __len__(self) -> int:
        return len(self._entries)

    def _drop_expired(self, now: float) -> None:
        """Expired entries at the least recently used end go, so a burst of specs does not
        hold its memory until evicted. (One being refreshed stays: it is served meanwhile.)"""
        while self._entries:
            key, (_, expires, _) = next(iter(self._entries.items()))
            if expires >= now or key in self._flights:
                return
            del self._entries[key]

    def invalidate(self, tenant: str) -> None:
        with self._lock:
            self._epochs[tenant] = self._epochs.get(tenant, 0) + 1


class _Flight:
    def __init__(self, stamp: tuple):
        self.stamp = stamp
        self.done = threading.Event()
        self.result: Recommendation | None = None


def _fresh_id(rec: Recommendation) -> Recommendation:
    return rec.model_copy(update={"recommendation_id": uuid.uuid4().hex})
