"""The refit process: a fitted model comes back from it intact, and a fit that fails or a
child that dies fails that refit only."""

import logging
import threading

import pytest

from predictor.fit_worker import FitAbandoned, FitFailed, FitWorker
from predictor.predictors import fit_predictor
from predictor.table import RunTable
from tests.factories import make_report
from tests.integration.blocking_fit import (BlockingFit, dying_fit, failing_fit, process_running,
                                           warning_fit)

pytestmark = pytest.mark.integration


@pytest.fixture
def runs():
    return RunTable.from_runs([make_report(f"r{i}", lr=5e-4 * (1 + i), loss=2.5 + 0.01 * (i - 2) ** 2)
                               for i in range(6)])


@pytest.fixture
def worker():
    w = FitWorker()
    yield w
    w.close()


def test_the_child_returns_the_model_fit_predictor_makes(worker, runs):
    fitted = worker.fit("surface", runs)
    here = fit_predictor("surface", runs)
    assert worker.pid is not None
    assert fitted.version == here.version
    assert fitted.predict(runs).mean.tolist() == here.predict(runs).mean.tolist()


def test_a_fit_that_raises_fails_with_the_childs_traceback(worker, runs):
    with pytest.raises(FitFailed, match="RuntimeError: no fit today"):
        worker.fit("prior", runs, failing_fit)
    assert worker.fit("prior", runs).version == "prior@1"  # the same child fits on


def test_a_child_that_dies_fails_that_fit_and_the_next_starts_another(worker, runs):
    worker.fit("prior", runs)
    first = worker.pid
    with pytest.raises(FitFailed, match="exited with code 3"):
        worker.fit("prior", runs, dying_fit)
    assert worker.fit("prior", runs).version == "prior@1"
    assert worker.pid not in (None, first)


def test_warnings_raised_in_the_child_are_logged_here(worker, runs, caplog):
    caplog.set_level(logging.WARNING, logger="predictor.fit_worker")
    worker.fit("prior", runs, warning_fit)
    assert any("RuntimeWarning: a degenerate fit" in r.getMessage() for r in caplog.records)


def test_close_abandons_a_fit_in_flight_and_later_fits(worker, runs, tmp_path):
    blocking = BlockingFit(tmp_path)
    outcome = []

    def fit():
        try:
            worker.fit("prior", runs, blocking.fitter())
        except FitAbandoned:
            outcome.append("abandoned")

    thread = threading.Thread(target=fit)
    thread.start()
    assert blocking.wait_started(30)
    worker.close()
    thread.join(10)
    assert outcome == ["abandoned"] and worker.pid is None
    with pytest.raises(FitAbandoned):
        worker.fit("prior", runs)


KILLED_SERVER = """
import sys, threading, time
from pathlib import Path
from predictor.fit_worker import FitWorker
from predictor.table import RunTable
from tests.factories import make_report
from tests.integration.blocking_fit import BlockingFit

worker, blocking = FitWorker(), BlockingFit(Path(sys.argv[1]))
runs = RunTable.from_runs([make_report("a")])
threading.Thread(target=worker.fit, args=("prior", runs, blocking.fitter()), daemon=True).start()
blocking.wait_started(30)
print(worker.pid, flush=True)
time.sleep(60)
"""


def test_the_child_of_a_killed_server_stops_its_fit(tmp_path):
    """SIGKILL gives the server no chance to stop its child: the child notices it is orphaned."""
    import os
    import signal
    import subprocess
    import sys
    import time

    server = subprocess.Popen([sys.executable, "-c", KILLED_SERVER, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    child = int(server.stdout.readline())
    assert process_running(child)
    server.send_signal(signal.SIGKILL)
    server.wait()
    deadline = time.monotonic() + 10
    while process_running(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not process_running(child)

