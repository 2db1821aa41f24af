"""RefitPoller: refits on runs this process did not report, without refitting in a loop."""

import pytest

from benchmark_db.store import RunStore
from predictor.registry import ModelRegistry
from service.refit_poller import RefitPoller
from tests.factories import make_report

pytestmark = pytest.mark.integration


@pytest.fixture
def parts(tmp_path):
    store = RunStore(f"sqlite:///{tmp_path / 'p.db'}")
    registry = ModelRegistry(store, kind="prior", debounce_seconds=0)
    yield store, registry, RefitPoller(store, registry, interval_seconds=0)
    registry.close()
    store.close()


def test_runs_stored_behind_its_back_are_refitted_on_once(parts):
    store, registry, poller = parts
    assert poller.poll_once() == []
    store.report("t", make_report("a"))  # as another replica, or `hparamrec import`, would
    assert poller.poll_once() == ["t"]
    assert registry.wait_idle(timeout=30) and registry.fitted_on("t") == 1
    assert poller.poll_once() == []  # the model read every stored run


def test_a_refit_that_fails_is_retried_once_not_on_every_poll(parts, monkeypatch):
    """Once more: a fit process killed (out of memory) left the replica on its old model
    until the tenant's next run, disagreeing with the others."""
    store, registry, poller = parts
    monkeypatch.setattr(registry, "refit", lambda tenant: 1 / 0)
    store.report("t", make_report("a"))
    assert poller.poll_once() == ["t"]
    assert registry.wait_idle(timeout=30)
    assert poller.poll_once() == ["t"]  # the retry
    assert registry.wait_idle(timeout=30)
    assert poller.poll_once() == []  # same count: wait for a new run
    store.report("t", make_report("b"))
    assert poller.poll_once() == ["t"]


def test_a_tenant_whose_refit_is_pending_is_left_to_it(parts):
    store, registry, poller = parts
    registry.debounce_seconds = 0.5
    store.report("t", make_report("a"))
    registry.schedule_refit("t")  # this replica's own report did this
    assert registry.busy("t") and registry.status().pending == 1
    assert poller.poll_once() == []
    assert registry.wait_idle(timeout=30) and registry.fitted_on("t") == 1
    assert not registry.busy("t")


def test_other_tenants_are_polled_while_one_keeps_refitting(parts, monkeypatch):
    """A tenant reporting steadily kept its replica's refits busy, and the poll returned
    early: another tenant's runs, stored through another replica, waited minutes, and the
    database's health went unchecked."""
    import threading

    store, registry, poller = parts
    release = threading.Event()
    refit = registry.refit
    monkeypatch.setattr(registry, "refit",
                        lambda tenant: release.wait(30) if tenant == "busy" else refit(tenant))
    store.report("busy", make_report("a"))
    registry.schedule_refit("busy")
    store.report("quiet", make_report("b"))  # through another replica
    try:
        assert poller.poll_once() == ["quiet"]
    finally:
        release.set()
    assert registry.wait_idle(timeout=30) and registry.fitted_on("quiet") == 1
