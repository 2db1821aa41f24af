"""Refits in a child process. A fit is mostly Python-level numerics that take from seconds to a
minute; on a thread of the server it competes for the GIL with every handler, and under
sustained load a refit was still running after four minutes. A child fits on the other core
while the server keeps answering, and returns the fitted predictor, pickled.

One child serves every fit, started at the first and kept (its imports cost about a second).
If it dies (killed, out of memory), that fit fails and the next one starts a new child. The
child is a fresh interpreter running this module (`python -m predictor.fit_worker FD`), not a
multiprocessing one: those re-run the parent's main script, which a script embedding the
service may not guard (and `python -` cannot be re-run at all).
"""

import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from multiprocessing.connection import Connection

from predictor.predictors import FittedPredictor, fit_predictor
from predictor.table import RunTable

log = logging.getLogger(__name__)
POLL_SECONDS = 0.2  # how soon a fit in flight notices close()
ORPHAN_CHECK_SECONDS = 1.0  # how soon the child notices the server is gone
Fitter = Callable[[str, RunTable], FittedPredictor]  # as fit_predictor


class FitAbandoned(Exception):
    """close() was called while the fit ran: its child is stopped and nothing is returned."""


class FitFailed(Exception):
    """The fit raised in the child (the message carries its traceback), or the child died."""


class FitWorker:
    def __init__(self):
        self._process: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._one_fit = threading.Lock()
        self._closed = threading.Event()

    def fit(self, kind: str, runs: RunTable, fitter: Fitter = fit_predictor) -> FittedPredictor:
        """fitter(kind, runs), computed in the child: fitter must pickle (a module-level
        function, or a partial of one). Warnings the fit raised there are logged here, where
        logging is configured."""
        with self._one_fit:
            conn = self._connection()
            try:
                conn.send((fitter, kind, runs))
                while not conn.poll(POLL_SECONDS):
                    if self._closed.is_set():
                        raise FitAbandoned()
                ok, payload, caught = conn.recv()
            except (EOFError, OSError):  # the child is gone: close() stopped it, or it died
                if self._closed.is_set():
                    raise FitAbandoned() from None
                code = self._process.wait(timeout=5)
                self._forget_child()
                raise FitFailed(f"the refit process exited with code {code} while fitting") from None
        for message in caught:
            log.warning("while fitting: %s", message)
        if not ok:
            raise FitFailed(payload)
        return payload

    def close(self) -> None:
        """Stops the child at once, abandoning a fit in flight (a fit cannot be interrupted
        otherwise, and its model would be thrown away)."""
        self._closed.set()
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            process.wait(timeout=5)

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs (for tests and diagnostics)."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def _connection(self) -> Connection:
        if self._closed.is_set():
            raise FitAbandoned()
        if self._process is None or self._process.poll() is not None:
            self._forget_child()
            ours, theirs = socket.socketpair()
            with theirs:
                # The child imports what this process can: the fitter may live in any module
                # on its path (a test's, a script's).
                path = os.pathsep.join(entry or os.getcwd() for entry in sys.path)
                self._process = subprocess.Popen(
                    [sys.executable, "-m", "predictor.fit_worker", str(theirs.fileno())],
                    pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                    env={**os.environ, "PYTHONPATH": path})
            self._conn = Connection(ours.detach())
            if self._closed.is_set():  # close() ran while the child started
                self.close()
                raise FitAbandoned()
        return self._conn

    def _forget_child(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._process = self._conn = None


def _serve(conn: Connection) -> None:
    """The child's loop: (fitter, kind, runs) in, (ok, predictor or traceback, warnings) out,
    until the server closes its end or dies."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the server, which stops us
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)  # one core for the fit; the server's threads have the other
    while True:
        try:
            fitter, kind, runs = conn.recv()
        except EOFError:
            return
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            try:
                reply = (True, fitter(kind, runs))
            except Exception:
                reply = (False, traceback.format_exc())
        messages = [f"{w.category.__name__}: {w.message}" for w in caught]
        try:
            try:
                conn.send((*reply, messages))
            except (pickle.PicklingError, TypeError, AttributeError):  # before a byte is written
                conn.send((False, traceback.format_exc(), messages))
        except OSError:  # the server went away mid-fit
            return


def _exit_when_orphaned(server_pid: int) -> None:
    """A server killed outright (SIGKILL, out of memory) cannot stop us, and its closed pipe is
    only seen between fits: a fit of a minute would run on for nothing."""
    while os.getppid() == server_pid:
        time.sleep(ORPHAN_CHECK_SECONDS)
    os._exit(0)


if __name__ == "__main__":
    _serve(Connection(int(sys.argv[1])))
