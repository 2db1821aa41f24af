"""Fits that misbehave, for the refit process. They run in its child, so they are module-level
functions, and a test meets the blocking one through files."""

import time
from functools import partial
from pathlib import Path

from predictor.predictors import fit_predictor


class BlockingFit:
    def __init__(self, directory: Path):
        self.started_file = directory / "fit-started"
        self.release_file = directory / "fit-release"

    def fitter(self):
        """What ModelRegistry.fitter takes: picklable, so it runs in the refit process."""
        return partial(_blocking_fit, str(self.started_file), str(self.release_file))

    def wait_started(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.started_file.exists():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def release(self) -> None:
        self.release_file.touch()


def _blocking_fit(started_file: str, release_file: str, kind, runs):
    Path(started_file).touch()
    deadline = time.monotonic() + 30
    while not Path(release_file).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return fit_predictor(kind, runs)


def dying_fit(kind, runs):
    """A child killed mid-fit (out of memory, say)."""
    import os

    os._exit(3)


def failing_fit(kind, runs):
    raise RuntimeError("no fit today")


def warning_fit(kind, runs):
    import warnings

    warnings.warn("a degenerate fit", RuntimeWarning)
    return fit_predictor(kind, runs)


def process_running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's exit may wait for a reaper)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
