"""A refit can run for a minute on a large store: the metrics show it running, what waits for
one and each model's age, and shutting down does not wait for a model it would throw away."""

import logging
import threading
import time
import urllib.request

import pytest

from clients import Client
from tests.factories import client_report
from tests.integration.in_process_server import running_service

pytestmark = pytest.mark.integration


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith("hparamrec_")}


@pytest.fixture
def slow_refits(monkeypatch):
    """Refits that block until released, as a long fit would."""
    started, release = threading.Event(), threading.Event()
    from predictor import registry

    real = registry.fit_predictor

    def blocking(kind, runs):
        started.set()
        release.wait(30)
        return real(kind, runs)

    monkeypatch.setattr(registry, "fit_predictor", blocking)
    yield started, release
    release.set()


def test_metrics_show_a_refit_in_progress_and_the_models_age(tmp_path, slow_refits):
    started, release = slow_refits
    with running_service(f"sqlite:///{tmp_path / 'r.db'}", metrics_port=0, predictor="prior",
                         refit_debounce_seconds=0, refit_poll_seconds=0) as svc:
        with Client(f"127.0.0.1:{svc.port}") as client:
            client.report_run(client_report("a"))
            assert started.wait(10)
            time.sleep(0.3)
            during = scrape(svc.metrics_port)
            assert during["hparamrec_refit_running_seconds"] >= 0.3
            svc.registry.schedule_refit("default")  # a report arriving meanwhile
            assert scrape(svc.metrics_port)["hparamrec_refits_pending"] == 1
            assert not any(k.startswith("hparamrec_model_fitted_timestamp") for k in during)
            release.set()
            assert svc.registry.wait_idle(10)
            after = scrape(svc.metrics_port)
    assert after["hparamrec_refit_running_seconds"] == 0
    assert after["hparamrec_refits_pending"] == 0
    fitted = after['hparamrec_model_fitted_timestamp_seconds{tenant="default"}']
    assert time.time() - 60 < fitted <= time.time()


def test_shutdown_does_not_wait_for_a_refit_in_progress(tmp_path, slow_refits, caplog):
    started, _release = slow_refits
    caplog.set_level(logging.INFO, logger="predictor.registry")
    with running_service(f"sqlite:///{tmp_path / 'r.db'}", predictor="prior", grace=1,
                         refit_debounce_seconds=0, refit_poll_seconds=0) as svc:
        with Client(f"127.0.0.1:{svc.port}") as client:
            client.report_run(client_report("a"))
        assert started.wait(10)
        stopping = time.monotonic()
    took = time.monotonic() - stopping  # the refit is still blocked: stop() left it behind
    assert took < 5
    assert any("not waiting for the refit of tenant default" in r.getMessage()
               for r in caplog.records)
