"""The recommendation cache of predictor/engine.py: served while its stamp holds, unique ids."""

import threading
import time

import pytest

from benchmark_db.records import Pins, resolve_spec
from predictor.engine import RecommendationCache
from predictor.prior import PriorRecommender

SPEC = resolve_spec(n_params=1e9, n_tokens=2e10)
REC = PriorRecommender().recommend(SPEC, Pins())


class Clock:
    """A monotonic clock the test moves: a ttl that a slow machine cannot race."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Counting:
    def __init__(self, delay: float = 0.0, fail_first: bool = False):
        self.calls, self.delay, self.fail_first = 0, delay, fail_first
        self.lock = threading.Lock()

    def __call__(self):
        with self.lock:
            self.calls += 1
            first = self.calls == 1
        time.sleep(self.delay)
        if first and self.fail_first:
            raise RuntimeError("boom")
        return REC.model_copy(update={"recommendation_id": f"computed-{self.calls}"})


def test_a_hit_is_a_copy_with_its_own_id():
    cache, compute = RecommendationCache(60), Counting()
    key, stamp = ("t", SPEC, Pins()), cache.stamp("t", None)
    answers = [cache.get_or_compute(key, stamp, compute) for _ in range(5)]
    assert compute.calls == 1
    assert len({a.recommendation_id for a in answers}) == 5
    assert all(a.model_dump(exclude={"recommendation_id"}) == REC.model_dump(exclude={"recommendation_id"})
               for a in answers)


def test_a_report_a_model_swap_or_the_ttl_makes_it_recompute():
    clock = Clock()
    cache, compute = RecommendationCache(60, clock=clock), Counting()
    key = ("t", SPEC, Pins())
    cache.get_or_compute(key, cache.stamp("t", None), compute)
    cache.invalidate("t")  # a run reported for this tenant
    cache.get_or_compute(key, cache.stamp("t", None), compute)
    assert compute.calls == 2
    cache.invalidate("other")  # another tenant's report changes nothing here
    cache.get_or_compute(key, cache.stamp("t", None), compute)
    assert compute.calls == 2

    class Model:  # stands for a FittedPredictor
        pass

    first, second = Model(), Model()
    cache.get_or_compute(key, cache.stamp("t", first), compute)
    cache.get_or_compute(key, cache.stamp("t", first), compute)
    cache.get_or_compute(key, cache.stamp("t", second), compute)
    assert compute.calls == 4
    clock.now += 61
    cache.get_or_compute(key, cache.stamp("t", second), compute)
    assert compute.calls == 5


def test_concurrent_misses_compute_once():
    cache, compute = RecommendationCache(60), Counting(delay=0.2)
    key, stamp = ("t", SPEC, Pins()), cache.stamp("t", None)
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(cache.get_or_compute(key, stamp, compute)))
               for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert compute.calls == 1 and len(answers) == 16
    assert len({a.recommendation_id for a in answers}) == 16


def test_when_the_computing_call_fails_the_waiting_ones_compute_themselves():
    cache, compute = RecommendationCache(60), Counting(delay=0.2, fail_first=True)
    key, stamp = ("t", SPEC, Pins()), cache.stamp("t", None)
    outcomes = []

    def ask():
        try:
            outcomes.append(cache.get_or_compute(key, stamp, compute).lr)
        except RuntimeError:
            outcomes.append("failed")

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
        time.sleep(0.01)
    for t in threads:
        t.join()
    assert outcomes.count("failed") == 1 and outcomes.count(REC.lr) == 3


def test_size_is_bounded():
    cache, compute = RecommendationCache(60, max_entries=3), Counting()
    stamp = cache.stamp("t", None)
    specs = [resolve_spec(n_params=n, n_tokens=2e10) for n in (1e8, 2e8, 3e8, 4e8)]
    for spec in specs:
        cache.get_or_compute(("t", spec, Pins()), stamp, compute)
    cache.get_or_compute(("t", specs[0], Pins()), stamp, compute)  # evicted: computed again
    assert compute.calls == 5


def test_expired_entries_go_when_the_next_is_stored():
    clock = Clock()
    cache, compute = RecommendationCache(60, clock=clock), Counting()
    stamp = cache.stamp("t", None)
    for n in (1e8, 2e8, 3e8):
        cache.get_or_compute(("t", resolve_spec(n_params=n, n_tokens=2e10), Pins()), stamp, compute)
    assert len(cache) == 3
    clock.now += 61
    cache.get_or_compute(("t", SPEC, Pins()), stamp, compute)
    assert len(cache) == 1


def test_the_engine_without_a_cache_computes_every_time(tmp_path):
    from benchmark_db.store import RunStore
    from predictor.engine import RecommendationEngine
    from predictor.registry import ModelRegistry

    store = RunStore(f"sqlite:///{tmp_path / 'c.db'}")
    registry = ModelRegistry(store, kind="prior")
    try:
        engine = RecommendationEngine(store, registry, cache_seconds=0.0)
        assert engine.cache is None
        first, second = (engine.recommend("t", SPEC, Pins()) for _ in range(2))
        assert first.lr == second.lr == REC.lr
        assert first.recommendation_id != second.recommendation_id
    finally:
        registry.close()
        store.close()


def test_an_aged_out_entry_is_served_while_one_call_refreshes_it():
    clock = Clock()
    cache, compute = RecommendationCache(60, clock=clock), Counting()
    key, stamp = ("t", SPEC, Pins()), cache.stamp("t", None)
    cache.get_or_compute(key, stamp, compute)
    clock.now += 61
    refreshing, release = threading.Event(), threading.Event()

    def slow():
        refreshing.set()
        assert release.wait(10)
        return compute()

    refresher = threading.Thread(target=cache.get_or_compute, args=(key, stamp, slow))
    refresher.start()
    assert refreshing.wait(10)
    answer = cache.get_or_compute(key, stamp, compute)  # served while the refresh is held
    assert answer.lr == REC.lr and compute.calls == 1
    release.set()
    refresher.join()
    assert compute.calls == 2  # the one refresh
    cache.invalidate("t")  # but a stale stamp is never served, refreshing or not
    assert cache.get_or_compute(key, cache.stamp("t", None), compute) is not None and compute.calls == 3


class FlakyRefiner:
    """Exploits by counting; its first tell fails after the run was stored (a refiner error)."""

    def __init__(self):
        self.exploits, self.tells = 0, 0

    def check_report(self, tenant, report):
        pass

    def exploit(self, tenant, spec, pins):
        self.exploits += 1
        return REC

    def tell(self, tenant, run):
        self.tells += 1
        if self.tells == 1:
            raise RuntimeError("tell failed")
        return []  # no warnings for the reporter


def test_a_report_whose_tell_fails_still_makes_the_cache_recompute(tmp_path):
    from benchmark_db.store import RunStore
    from predictor.engine import RecommendationEngine
    from predictor.registry import ModelRegistry
    from tests.factories import make_report

    store = RunStore(f"sqlite:///{tmp_path / 'c.db'}")
    registry = ModelRegistry(store, kind="prior")
    refiner = FlakyRefiner()
    try:
        engine = RecommendationEngine(store, registry, refiner=refiner, cache_seconds=60)
        engine.recommend("t", SPEC, Pins())
        with pytest.raises(RuntimeError):
            engine.report("t", make_report("run-1"))  # stored, not told: the next sync tells it
        engine.recommend("t", SPEC, Pins())
        assert refiner.exploits == 2
        created = engine.report("t", make_report("run-1")).created  # the re-send is told now
        assert not created and refiner.tells == 2
        engine.recommend("t", SPEC, Pins())
        assert refiner.exploits == 3
    finally:
        registry.close()
        store.close()
