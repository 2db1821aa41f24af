"""Replicas on one database learn of each other's runs: every few seconds one cheap query counts
each tenant's stored runs, and a tenant whose count differs from what its current model was
fitted on gets a refit. A replica's own reports schedule theirs at once (predictor/engine.py);
this catches the runs reported through the others, and runs imported with `hparamrec import`.
Each poll also tells `on_database` whether the database could be reached, takes writes, and a
SQLite file is still the one opened (the server's health follows it)."""

import logging
import threading
from collections.abc import Callable

from benchmark_db.engine import check_database_file, check_writable
from benchmark_db.errors import database_error_summary, database_unreachable
from benchmark_db.store import RunStore
from predictor.registry import ModelRegistry

log = logging.getLogger(__name__)
POLL_ATTEMPTS = 2  # refits a poll schedules for one count of a tenant's runs: one retry
# With the poll for runs off (one replica), the database is still checked this often for health.
HEALTH_ONLY_SECONDS = 2.0


class RefitPoller:
    def __init__(self, store: RunStore, registry: ModelRegistry, interval_seconds: float,
                 on_database: Callable[[bool], None] | None = None):
        self.store = store
        self.on_database = on_database
        self.registry = registry
        self.interval_seconds = interval_seconds
        # (count, times scheduled) of each tenant's last poll-refit
        self._scheduled: dict[str, tuple[int, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hparamrec-refit-poll", daemon=True)

    def start(self) -> None:
        if self.interval_seconds > 0 or self.on_database is not None:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def poll_once(self) -> list[str]:
        """Schedules a refit for each tenant whose stored runs changed; returns those tenants.

        A tenant whose refit is waiting or running is left to it (it reads the runs when it
        starts; what it misses, the next poll sees), and a count already scheduled is
        scheduled once more, not on every poll: a refit that failed (a fit process killed)
        is retried once, and one that keeps failing when the next run arrives."""
        counts = self.check_database()
        stale = []
        for tenant, count in counts.items():
            if count == self.registry.fitted_on(tenant) or self.registry.busy(tenant):
                continue
            scheduled, attempts = self._scheduled.get(tenant, (None, 0))
            attempts = attempts + 1 if count == scheduled else 1
            if attempts > POLL_ATTEMPTS:
                continue
            self._scheduled[tenant] = (count, attempts)
            self.registry.schedule_refit(tenant)
            stale.append(tenant)
        return stale

    def check_database(self) -> dict[str, int]:
        """Each tenant's stored runs; raises if the database cannot store runs."""
        check_database_file(self.store.engine)  # deleted under us: health goes NOT_SERVING
        check_writable(self.store.engine)  # a standby after a failover: NOT_SERVING too
        return self.store.run_counts()  # also: the database answers

    def _run(self) -> None:
        polling = self.interval_seconds > 0
        what = "polling for runs stored by other replicas" if polling else "checking the database"
        while not self._stop.wait(self.interval_seconds if polling else HEALTH_ONLY_SECONDS):
            try:
                if polling:
                    stale = self.poll_once()
                else:
                    self.check_database()
                    stale = []
            except Exception as exc:  # the database may be briefly away; try again next interval
                unreachable = database_unreachable(exc)
                if unreachable:
                    log.warning("%s failed: %s", what, database_error_summary(exc))
                else:
                    log.warning("%s failed", what, exc_info=True)
                if self.on_database is not None and unreachable:
                    self.on_database(False)
                continue
            if self.on_database is not None:
                self.on_database(True)
            if stale:
                log.info("stored runs changed for tenant(s) %s: refit scheduled", ", ".join(stale))
