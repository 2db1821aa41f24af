"""Group commit: concurrent writers hand their items to one thread, which stores whatever has
queued up in one transaction (one commit, one fsync) and only then answers each of them.

SQLite lets one connection write at a time; 32 handler threads each committing their own run
spend their time in its busy handler, which sleeps in steps of up to 100 ms. One writer that
batches has no such contention, and costs no added latency when idle: a batch is whatever
arrived while the previous commit was running. Every item is still acknowledged only after the
commit that contains it.
"""

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from benchmark_db.errors import database_error_summary, database_unreachable

log = logging.getLogger(__name__)
_STOP = object()


class GroupCommitter:
    def __init__(self, write_batch: Callable[[Sequence[Any]], Sequence[Any]], max_batch: int = 256,
                 name: str = "hparamrec-group-commit"):
        """write_batch(items) stores all items in one transaction and returns one result per item."""
        self.write_batch = write_batch
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._closing = threading.Lock()  # nothing is queued after the stop mark
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: Any) -> Any:
        """Blocks until the item is committed; returns its result (or raises its error)."""
        future: Future = Future()
        with self._closing:  # checked and queued at once: queued after the stop, it would
            if self._closed:  # never be answered, its caller blocked for good
                raise RuntimeError("the store is closed")
            self._queue.put((item, future))
        return future.result()

    def close(self) -> None:
        """Commits what is queued, then stops the writer."""
        with self._closing:
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join(timeout=60)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            rest, stop = self._take(self.max_batch - 1)
            unreachable = self._write([first, *rest])
            if unreachable is not None and not stop:
                # What queued meanwhile would wait out the busy timeout once more, so a caller
                # could wait twice its length: it fails now too, and its caller retries.
                queued, stop = self._take(None)
                for _, future in queued:
                    future.set_exception(unreachable)
            if stop:
                return

    def _take(self, limit: int | None) -> tuple[list, bool]:
        """Up to `limit` (None: all) items already queued, and whether the stop mark was met."""
        items = []
        while limit is None or len(items) < limit:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return items, True
            items.append(item)
        return items, False

    def _write(self, batch: list[tuple[Any, Future]]) -> Exception | None:
        """Stores the batch and answers its callers; returns the error if the database was out
        of reach."""
        try:
            results = self.write_batch([item for item, _ in batch])
        except Exception as exc:
            if database_unreachable(exc):
                # A locked or lost database fails every item alike: retrying them one by one
                # would wait out the busy timeout once per item, stalling every caller.
                for _, future in batch:
                    future.set_exception(exc)
                return exc
            if len(batch) == 1:
                batch[0][1].set_exception(exc)
                return None
            # One bad item must not fail the others: store them one by one.
            log.warning("a batch of %d writes failed (%s); retrying them one by one", len(batch),
                        database_error_summary(exc))
            for one in batch:
                self._write([one])
            return None
        for (_, future), result in zip(batch, results, strict=True):
            future.set_result(result)
        return None
