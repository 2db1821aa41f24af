import threading
import time

import pytest

from benchmark_db.records import Pins, resolve_spec
from benchmark_db.store import RunStore
from predictor.engine import RecommendationEngine
from predictor.registry import ModelRegistry
from tests.factories import make_report

pytestmark = pytest.mark.integration


@pytest.fixture
def store(tmp_path):
    s = RunStore(f"sqlite:///{tmp_path / 'r.db'}")
    yield s
    s.close()


def test_unknown_predictor_fails_at_start(store):
    with pytest.raises(ValueError, match="unknown predictor"):
        ModelRegistry(store, kind="oracle")


def test_prior_serves_until_runs_exist_then_a_refit_swaps_in(store):
    registry = ModelRegistry(store, kind="prior", debounce_seconds=0.05)
    engine = RecommendationEngine(store, registry)
    spec = resolve_spec(n_params=1e9, n_tokens=2e10)
    assert engine.recommend("t", spec, Pins()).model_versions == ("prior@1",)
    engine.report("t", make_report("a"))
    assert registry.wait_idle(timeout=30)
    assert registry.get("t") is not None and registry.get("other") is None
    registry.close()


def test_a_burst_of_reports_coalesces_into_few_refits(store, monkeypatch):
    registry = ModelRegistry(store, kind="prior", debounce_seconds=0.3)
    fits = []
    original = registry.refit
    monkeypatch.setattr(registry, "refit", lambda tenant: fits.append(tenant) or original(tenant))
    engine = RecommendationEngine(store, registry)
    threads = [threading.Thread(target=engine.report, args=("t", make_report(f"r{i}")))
               for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert registry.wait_idle(timeout=30)
    assert 1 <= len(fits) <= 3
    registry.close()


def test_a_resent_run_does_not_refit(store):
    registry = ModelRegistry(store, kind="prior", debounce_seconds=0.05)
    engine = RecommendationEngine(store, registry)
    engine.report("t", make_report("a"))
    assert registry.wait_idle(timeout=30)
    before = registry.get("t")
    engine.report("t", make_report("a"))
    assert registry.wait_idle(timeout=30)
    assert registry.get("t") is before
    registry.close()


def test_close_does_not_wait_out_the_debounce(store):
    """A refit still in its debounce is dropped at once: shutdown never waits for it."""
    registry = ModelRegistry(store, kind="prior", debounce_seconds=30)
    registry.schedule_refit("t")
    assert not registry.wait_idle(timeout=0.2)  # held in the debounce
    started = time.monotonic()
    registry.close(wait=10)
    assert time.monotonic() - started < 2
    assert not registry._worker.is_alive()
    assert registry.get("t") is None


def test_a_refit_at_once_skips_the_debounce(store):
    """The refits at start-up: no burst of reports to wait for, and the server is not warm
    until they end."""
    store.report("t", make_report("a"))
    registry = ModelRegistry(store, kind="prior", debounce_seconds=30)
    started = time.monotonic()
    registry.schedule_refit("t", at_once=True)
    assert registry.wait_idle(timeout=20)
    assert time.monotonic() - started < 10 and registry.get("t") is not None
    registry.schedule_refit("t")  # a report's: debounced as before
    assert not registry.wait_idle(timeout=0.5)
    registry.close()


def test_reports_during_a_refit_wait_out_the_debounce_for_the_next(store, monkeypatch):
    """A steady stream of reports: a tenant marked again while its refit ran was refitted the
    moment it ended, back to back (0.3-0.5 s apart with a 2 s debounce, a fit's CPU for ever
    on a large store). The next refit now waits the debounce, as after a quiet spell."""
    registry = ModelRegistry(store, kind="prior", debounce_seconds=0.5)
    started = []
    original = registry.refit

    def slow_refit(tenant):  # a fit that takes a while, as on a real store: reports land during it
        started.append(time.monotonic())
        time.sleep(0.3)
        return original(tenant)

    monkeypatch.setattr(registry, "refit", slow_refit)
    engine = RecommendationEngine(store, registry)
    stop = time.monotonic() + 3.0
    i = 0
    while time.monotonic() < stop:  # a report every 50 ms for 3 s
        engine.report("t", make_report(f"r{i}"))
        i += 1
        time.sleep(0.05)
    assert registry.wait_idle(timeout=30)
    registry.close()
    gaps = [b - a for a, b in zip(started, started[1:])]
    assert len(started) >= 2 and min(gaps) >= 0.3 + 0.5, gaps
