"""A refit can run for a minute on a large store: the metrics show it running, what waits for
one and each model's age; it runs in its own process, so the server answers meanwhile and
shutting down stops it rather than wait for a model it would throw away."""

import logging
import os
import time
import urllib.request
from contextlib import contextmanager

import pytest

from clients import Client
from tests.factories import client_report, make_report
from tests.integration.blocking_fit import BlockingFit, process_running
from tests.integration.in_process_server import running_service

pytestmark = pytest.mark.integration


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith("hparamrec_")}


@pytest.fixture
def slow_fit(tmp_path):
    fit = BlockingFit(tmp_path)
    yield fit
    fit.release()


@contextmanager
def a_refit_in_progress(tmp_path, slow_fit, **settings):
    """A server and a client, the refit the client's report started blocked until released."""
    with running_service(f"sqlite:///{tmp_path / 'r.db'}", predictor="prior",
                         refit_debounce_seconds=0, refit_poll_seconds=0, **settings) as svc:
        svc.registry.fitter = slow_fit.fitter()
        with Client(f"127.0.0.1:{svc.port}") as client:
            client.report_run(client_report("a"))
            assert slow_fit.wait_started(30)
            yield svc, client


def test_metrics_show_a_refit_in_progress_and_the_models_age(tmp_path, slow_fit):
    with a_refit_in_progress(tmp_path, slow_fit, metrics_port=0) as (svc, _):
        time.sleep(0.3)
        during = scrape(svc.metrics_port)
        assert during["hparamrec_refit_running_seconds"] >= 0.3
        assert during["hparamrec_fit_process_resident_memory_bytes"] > 20e6  # the child's
        assert during["hparamrec_request_queue_seconds_count"] >= 1  # the report
        assert during["hparamrec_requests_running"] == 0
        text = urllib.request.urlopen(f"http://127.0.0.1:{svc.metrics_port}/metrics").read()
        assert b"\nprocess_resident_memory_bytes " in text  # the server's own
        svc.registry.schedule_refit("default")  # a report arriving meanwhile
        assert scrape(svc.metrics_port)["hparamrec_refits_pending"] == 1
        assert not any(k.startswith("hparamrec_model_fitted_timestamp") for k in during)
        slow_fit.release()
        assert svc.registry.wait_idle(10)
        after = scrape(svc.metrics_port)
    assert after["hparamrec_refit_running_seconds"] == 0
    assert after["hparamrec_refits_pending"] == 0
    fitted = after['hparamrec_model_fitted_timestamp_seconds{tenant="default"}']
    assert time.time() - 60 < fitted <= time.time()


def test_the_refit_runs_in_its_own_process_and_the_server_answers_meanwhile(tmp_path, slow_fit):
    with a_refit_in_progress(tmp_path, slow_fit) as (svc, client):
        child = svc.registry.fit_worker_pid
        assert child is not None and child != os.getpid()
        assert client.recommend({"n_params": 1e9, "n_tokens": 2e10}).lr > 0
        assert svc.registry.busy("default")  # answered while the fit is still held
        slow_fit.release()
        assert svc.registry.wait_idle(30)
        assert svc.registry.get("default") is not None  # the child's model, swapped in
        assert svc.registry.fit_worker_pid == child  # kept for the next refit


def test_shutdown_stops_a_refit_in_progress(tmp_path, slow_fit, caplog):
    caplog.set_level(logging.INFO, logger="predictor.registry")
    with a_refit_in_progress(tmp_path, slow_fit, grace=1) as (svc, _):
        child = svc.registry.fit_worker_pid
    # stop() has returned while the fit still blocks (it is released after the test, or 30 s):
    # it ended the fit's process rather than wait for it.
    assert not process_running(child)
    assert any("stopped the refit of tenant default" in r.getMessage() for r in caplog.records)



def test_a_replica_is_warm_once_its_stored_tenants_have_their_first_models(tmp_path, slow_fit):
    """After a (re)start the answers come from the published laws until the first refits end:
    minutes on a large store. `hparamrec.warm` says when they are the learned ones."""
    from benchmark_db.store import RunStore
    from service.server import Service
    from service.settings import Settings

    url = f"sqlite:///{tmp_path / 'w.db'}"
    store = RunStore(url)
    store.report("default", make_report("stored"))
    store.close()
    svc = Service(Settings(database_url=url, port=0, metrics_port=None, auth_disabled=True,
                           predictor="prior", refit_debounce_seconds=0, refit_poll_seconds=0))
    svc.registry.fitter = slow_fit.fitter()
    svc.start()
    try:
        with Client(f"127.0.0.1:{svc.port}") as client:
            assert slow_fit.wait_started(30)
            assert client.health() == client.health("hparamrec.v1.RecommenderService") == "SERVING"
            assert client.health("hparamrec.warm") == "NOT_SERVING"
            slow_fit.release()
            deadline = time.monotonic() + 30
            while client.health("hparamrec.warm") != "SERVING" and time.monotonic() < deadline:
                time.sleep(0.05)
            assert client.health("hparamrec.warm") == "SERVING"
            assert svc.registry.fitted_on("default") == 1
    finally:
        svc.stop(grace=1)


def test_an_empty_store_is_warm_at_once(tmp_path):
    with running_service(f"sqlite:///{tmp_path / 'e.db'}") as svc:
        with Client(f"127.0.0.1:{svc.port}") as client:
            deadline = time.monotonic() + 5
            while client.health("hparamrec.warm") != "SERVING" and time.monotonic() < deadline:
                time.sleep(0.05)
            assert client.health("hparamrec.warm") == "SERVING"
