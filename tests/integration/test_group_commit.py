"""Reports committed in groups (SQLite) keep report()'s contract: idempotent, acked after commit,
one bad item failing only itself."""

import threading
import time
from concurrent import futures

import pytest
from sqlalchemy.exc import OperationalError

from benchmark_db.group_commit import GroupCommitter
from tests.factories import make_report

pytestmark = pytest.mark.integration


def test_report_many_answers_each_item_like_report(store):
    store.report("t", make_report("old", loss=2.0))
    results = store.report_many([("t", make_report("new", loss=2.1)), ("t", make_report("old", loss=9.0)),
                                 ("t", make_report("new", loss=9.0)), ("u", make_report("old", loss=3.0))])
    assert [created for _, created in results] == [True, False, False, True]
    assert [run.outcome.final_loss for run, _ in results] == [2.1, 2.0, 2.1, 3.0]
    assert store.count("t") == 2 and store.count("u") == 1
    assert store.get("t", "new") == results[0][0]


def test_concurrent_reports_are_each_stored_once(store):
    run_ids = [f"r{i}" for i in range(150)]
    with futures.ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda i: store.report("t", make_report(run_ids[i % 150], loss=2 + i / 1000)),
                                range(450)))
    for run_id in run_ids:
        mine = [(run, created) for run, created in answers if run.run_id == run_id]
        assert sum(created for _, created in mine) == 1
        assert len({run.outcome.final_loss for run, _ in mine}) == 1  # everyone got the stored one
    assert store.count("t") == 150


def test_a_failing_item_fails_alone():
    written = []

    def write_batch(items):
        if "bad" in items:
            raise ValueError("bad item")
        written.extend(items)
        return [f"ok:{item}" for item in items]

    gate = threading.Event()
    committer = GroupCommitter(lambda items: gate.wait() and write_batch(items))
    try:
        with futures.ThreadPoolExecutor(8) as pool:
            submitted = [pool.submit(committer.submit, item) for item in ("a", "bad", "b", "c")]
            gate.set()
            outcomes = []
            for f in submitted:
                try:
                    outcomes.append(f.result(timeout=10))
                except ValueError:
                    outcomes.append("error")
        assert outcomes == ["ok:a", "error", "ok:b", "ok:c"]
        assert sorted(written) == ["a", "b", "c"]
    finally:
        committer.close()


def test_a_locked_database_fails_the_batch_and_the_queue_at_once():
    """Retried one by one, each write would wait out SQLite's busy timeout again: the last
    caller of a batch of n would wait n + 1 timeouts, far past its deadline."""
    locked = OperationalError("INSERT ...", {}, Exception("database is locked"))
    calls = []
    first_started, release = threading.Event(), threading.Event()

    def write_batch(items):
        calls.append(list(items))
        first_started.set()
        release.wait()
        raise locked

    committer = GroupCommitter(write_batch, max_batch=2)
    try:
        with futures.ThreadPoolExecutor(8) as pool:
            first = pool.submit(committer.submit, "a")
            assert first_started.wait(60)
            queued = [pool.submit(committer.submit, item) for item in ("b", "c", "d", "e")]
            deadline = time.monotonic() + 60
            while committer._queue.qsize() < 4:  # all queued behind the write in progress
                assert time.monotonic() < deadline, committer._queue.qsize()
                time.sleep(0.01)
            release.set()
            for f in [first, *queued]:
                with pytest.raises(OperationalError):
                    f.result(timeout=10)
        assert calls == [["a"]]  # nothing retried, nothing queued tried again
    finally:
        committer.close()


def test_a_write_racing_close_is_answered_or_refused(monkeypatch):
    """A write checked for a closed store just before close(), and queued just after its stop
    mark, was never answered: its caller (a handler still running at shutdown) blocked for
    good, and the process with it. Made to happen here by pausing the write in between."""
    from concurrent.futures import Future

    import benchmark_db.group_commit as group_commit

    committer = GroupCommitter(lambda items: [f"ok:{item}" for item in items])
    paused, resume = threading.Event(), threading.Event()

    def paused_future():
        paused.set()
        resume.wait(10)
        return Future()

    monkeypatch.setattr(group_commit, "Future", paused_future)
    outcome = []

    def write():
        try:
            outcome.append(committer.submit("late"))
        except RuntimeError as exc:
            outcome.append(str(exc))

    writer = threading.Thread(target=write, daemon=True)  # may block for good: not joined at exit
    writer.start()
    assert paused.wait(10)
    committer.close()
    resume.set()
    writer.join(timeout=10)
    assert outcome == ["the store is closed"]
