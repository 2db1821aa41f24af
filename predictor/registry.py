"""The current fitted predictor of each tenant. Refits are scheduled on one background thread,
coalesce bursts of reports (debounce), fit in a child process (predictor/fit_worker.py) and
replace the predictor with one reference assignment, so a recommendation sees either the old
model or the new one, never a half-fitted one.

Each fitted predictor is saved in the database (benchmark_db/fitted_models.py) with the count of
runs it was fitted on and the hash of the code that fitted it. A refit that finds one saved for
the same runs and code loads it instead: a restarted server is warm in a moment, and of replicas
sharing a PostgreSQL, which take turns on each tenant's fit, one fits and the others load. The
database is trusted like the code: what it holds is unpickled."""

import functools
import hashlib
import importlib.metadata
import logging
import pickle
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmark_db.fitted_models import SavedModel
from benchmark_db.store import RunStore
from predictor.fit_worker import FitAbandoned, Fitter, FitWorker
from predictor.predictors import FittedPredictor, check_kind, fit_predictor
from predictor.table import RunTable

log = logging.getLogger(__name__)


# Libraries whose objects a fitted predictor holds: another version of one may unpickle them
# differently, or not at all.
FITTED_LIBRARIES = ("numpy", "scipy", "scikit-learn", "lightgbm", "torch")


@functools.cache
def fitting_code() -> str:
    """SHA-256 of what fits the models: every file of this package (the PFN checkpoint too)
    and the versions of the libraries in FITTED_LIBRARIES."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    for name in FITTED_LIBRARIES:
        digest.update(f"{name}={importlib.metadata.version(name)}".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class RefitStatus:
    """What the refit thread is doing, for metrics: a refit can take a minute on a large store,
    and reports keep asking for more."""
    running_tenant: str | None  # the tenant being refitted now
    running_seconds: float  # for how long (0 when none is)
    pending: int  # tenants waiting for a refit


class ModelRegistry:
    def __init__(self, store: RunStore, kind: str = "auto", debounce_seconds: float = 2.0,
                 on_refit: Callable[[str, str, float], None] | None = None,
                 on_refit_failed: Callable[[str], None] | None = None):
        check_kind(kind)  # fail at start-up, not at the first refit
        self.store = store
        self.kind = kind
        self.debounce_seconds = debounce_seconds
        self.on_refit = on_refit  # (tenant, model version, seconds), e.g. for metrics
        self.on_refit_failed = on_refit_failed  # (tenant)
        self._fit_worker = FitWorker()
        self.fitter: Fitter = fit_predictor  # what a refit calls in the child; must pickle
        self._current: dict[str, FittedPredictor] = {}
        self._fitted_on: dict[str, int] = {}  # stored runs each tenant's last refit read
        self._dirty: dict[str, None] = {}  # tenants waiting for a refit, in order (a set)
        self._running: tuple[str, float] | None = None  # (tenant, time.monotonic() it started)
        self._wake = threading.Condition()
        self._at_once = False  # a refit scheduled without debounce is waiting
        self._closed = False
        self._idle = threading.Event()
        self._idle.set()
        self._worker = threading.Thread(target=self._run, name="hparamrec-refit", daemon=True)
        self._worker.start()

    def get(self, tenant: str) -> FittedPredictor | None:
        return self._current.get(tenant)

    def fitted_on(self, tenant: str) -> int | None:
        """How many stored runs the tenant's last refit read (None before its first refit), so
        a replica can tell when runs reported through another one call for a refit."""
        return self._fitted_on.get(tenant)

    def refit(self, tenant: str) -> FittedPredictor | None:
        """Fits on the tenant's stored runs now; None (and the prior serves) when it has none."""
        records = self.store.all_runs(tenant)
        runs = RunTable.from_runs(records)
        if not len(runs):
            self._current.pop(tenant, None)
            self._fitted_on[tenant] = len(records)
            return None
        started = time.perf_counter()
        with self.store.fitted_models.fitting(tenant, self.kind):  # replicas take turns
            predictor = self._saved(tenant, len(records))
            loaded = predictor is not None
            if not loaded:
                predictor = self._fit_worker.fit(self.kind, runs, self.fitter)
                self._save(tenant, len(records), predictor)
        self._current[tenant] = predictor  # the atomic swap
        self._fitted_on[tenant] = len(records)
        seconds = time.perf_counter() - started
        log.info("%s %s for tenant %s on %d runs in %.2f s", "loaded" if loaded else "refit",
                 predictor.version, tenant, len(runs), seconds)
        if self.on_refit:
            self.on_refit(tenant, predictor.version, seconds)
        return predictor

    def _saved(self, tenant: str, runs: int) -> FittedPredictor | None:
        """The predictor saved for these runs by this code, if any (not for a test's fitter)."""
        if self.fitter is not fit_predictor:
            return None
        saved = self.store.fitted_models.get(tenant, self.kind)
        if saved is None or saved.runs != runs or saved.code != fitting_code():
            return None
        try:
            return pickle.loads(saved.model)
        except Exception as exc:  # e.g. the PFN's checkpoint not where it was: fit instead
            log.warning("could not load the saved %s model of tenant %s (%s): fitting it again",
                        self.kind, tenant, exc)
            return None

    def _save(self, tenant: str, runs: int, predictor: FittedPredictor) -> None:
        if self.fitter is not fit_predictor:
            return
        try:
            self.store.fitted_models.put(tenant, self.kind, SavedModel(
                fitting_code(), runs, predictor.version, pickle.dumps(predictor)))
        except Exception:  # the model serves all the same; the next start fits again
            log.exception("could not save the %s model of tenant %s", self.kind, tenant)

    def schedule_refit(self, tenant: str, at_once: bool = False) -> None:
        """at_once: no debounce (the refits at start-up: no burst of reports to wait for)."""
        with self._wake:
            self._dirty[tenant] = None
            self._at_once = self._at_once or at_once
            self._idle.clear()
            self._wake.notify()

    @property
    def closed(self) -> bool:
        return self._closed

    def busy(self, tenant: str) -> bool:
        """Whether a refit of the tenant is waiting or running (it reads the runs as it starts)."""
        with self._wake:
            running = self._running
            return tenant in self._dirty or (running is not None and running[0] == tenant)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Blocks until no refit is pending or running (for tests and orderly shutdown)."""
        return self._idle.wait(timeout)

    @property
    def fit_worker_pid(self) -> int | None:
        """The refit process's id while it runs."""
        return self._fit_worker.pid

    def status(self) -> RefitStatus:
        running = self._running
        if running is None:
            return RefitStatus(None, 0.0, len(self._dirty))
        return RefitStatus(running[0], time.monotonic() - running[1], len(self._dirty))

    def close(self, wait: float = 1.0) -> None:
        """Stops the refit process, abandoning a refit in progress (its model would be thrown
        away), and the refit thread, waiting at most `wait` seconds for it (it may be reading
        the runs; it is a daemon, ending with the process)."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._fit_worker.close()
        self._worker.join(timeout=wait)
        status = self.status()
        if self._worker.is_alive() and status.running_tenant is not None:
            log.info("not waiting for the refit of tenant %s, running for %.0f s: its model is "
                     "discarded", status.running_tenant, status.running_seconds)

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._dirty and not self._closed:
                    self._idle.set()
                    self._wake.wait()
                # Let a burst of reports land first; close() ends the wait, so shutting down
                # never waits out a debounce.
                if not self._at_once:
                    self._wake.wait_for(lambda: self._closed, timeout=self.debounce_seconds)
                self._at_once = False
                if self._closed:
                    self._idle.set()
                    return
                # This round refits the tenants marked by now; one marked again while its refit
                # runs waits out the next debounce (refitted back to back, a stream of reports
                # kept a fit running for ever).
                round_ = set(self._dirty)
            while True:
                # One tenant at a time off the queue: those waiting stay counted as pending
                # (status) and busy (the poller); the whole queue taken at once hid them.
                with self._wake:
                    if self._closed:
                        self._idle.set()
                        return
                    tenant = next((t for t in self._dirty if t in round_), None)
                    if tenant is None:
                        break
                    round_.discard(tenant)
                    del self._dirty[tenant]
                    self._running = (tenant, time.monotonic())
                try:
                    self.refit(tenant)
                except FitAbandoned:  # close() stopped its child
                    log.info("stopped the refit of tenant %s, running for %.0f s: its model is "
                             "discarded", tenant, self.status().running_seconds)
                    self._idle.set()
                    return
                except Exception:  # keep serving the previous model; the next report retries
                    log.exception("refit failed for tenant %s", tenant)
                    if self.on_refit_failed:
                        self.on_refit_failed(tenant)
                finally:
                    self._running = None
