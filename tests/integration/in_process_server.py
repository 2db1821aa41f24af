"""A real `Service` in the test's own process, on a free port: the one way integration tests
start one (`server_process.py` runs `hparamrec serve` as a separate process instead)."""

from collections.abc import Iterator
from contextlib import contextmanager

from service.server import Service
from service.settings import Settings

# After a report (or at start, with runs stored) a refit waits refit_debounce_seconds (2 s by
# default) before it starts: registry.wait_idle() waits that out, and stop() waits up to 1 s
# for a refit still waiting. Tests not about the debounce pass this short one instead (a refit
# then runs in its child process at once, and stop() ends it at once).
QUICK_REFITS = 0.1


@contextmanager
def running_service(database_url: str, *, grace: float = 1, **settings) -> Iterator[Service]:
    """A started Service on `database_url`, stopped on leaving (in-flight calls get `grace`
    seconds). A free port, no metrics endpoint and authentication off, unless `settings`
    (any `Settings` field) say otherwise."""
    svc = Service(Settings(database_url=database_url,
                           **{"port": 0, "metrics_port": None, "auth_disabled": True, **settings}))
    svc.start()
    try:
        yield svc
    finally:
        svc.stop(grace=grace)
