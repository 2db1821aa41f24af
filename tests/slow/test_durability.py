"""Nothing acknowledged is lost: a server process killed mid-burst, restarted, and sent everything
again stores each run exactly once with the data its client sent; SIGTERM drains in-flight
calls. Real processes on loopback, SQLite with synchronous=FULL."""

import sqlite3
import threading
import time

import grpc
import pytest

from benchmark_db.store import RunStore
from clients.client import spec
from hparamrec.v1 import recommender_pb2 as pb
from hparamrec.v1 import recommender_pb2_grpc as pb_grpc
from service.converters import report_from_proto
from tests.factories import all_runs
from tests.integration.server_process import ServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.integration]
N_RUNS = 1000  # 200 are acknowledged before the kill: it lands mid-burst with room to spare
N_CHANNELS = 8  # separate connections, like separate launchers


def report(i: int) -> pb.ReportRunRequest:
    """Run i, with data of its own in every part of the record."""
    diverged = i % 10 == 0
    outcome = (pb.RunOutcome(status=pb.RUN_STATUS_DIVERGED) if diverged else
               pb.RunOutcome(status=pb.RUN_STATUS_COMPLETED, final_loss=2.0 + i / 10_000))
    return pb.ReportRunRequest(
        run_id=f"run-{i:05d}",
        spec=spec(n_params=1e8 * (1 + i % 37), n_tokens=1e10 * (1 + i % 11), seq_len=1024 * (1 + i % 4)),
        hyperparameters=pb.Hyperparameters(lr=1e-4 * (1 + i % 97), batch_size_tokens=2.0 ** (16 + i % 8),
                                           weight_decay=(i % 13) / 100),
        outcome=outcome,
        metadata={"client": f"launcher-{i % 50}", "i": str(i)},
        recommendation_id=f"rec-{i}")


def assert_is(run: pb.Run, sent: pb.ReportRunRequest) -> None:
    assert run.run_id == sent.run_id
    for name in ("n_params", "n_tokens", "seq_len"):
        assert getattr(run.spec, name) == getattr(sent.spec, name), (sent.run_id, name)
    assert run.hyperparameters == pb.Hyperparameters(
        lr=sent.hyperparameters.lr, batch_size_tokens=sent.hyperparameters.batch_size_tokens,
        weight_decay=sent.hyperparameters.weight_decay, qat_fraction=0.0), sent.run_id
    assert run.outcome == sent.outcome, sent.run_id
    assert dict(run.metadata) == dict(sent.metadata), sent.run_id
    assert run.recommendation_id == sent.recommendation_id


class Burst:
    """Sends requests concurrently over several connections; records each answer and when it came."""

    def __init__(self, target: str, requests: list[pb.ReportRunRequest], timeout: float = 60):
        self.channels = [grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
                         for _ in range(N_CHANNELS)]
        stubs = [pb_grpc.RecommenderServiceStub(c) for c in self.channels]
        self.answers: dict[str, tuple[float, pb.ReportRunResponse | grpc.StatusCode]] = {}
        self.lock = threading.Lock()
        self.acked = threading.Semaphore(0)
        self.done = threading.Event()
        self.expected = len(requests)
        self.futures = []
        for i, request in enumerate(requests):
            future = stubs[i % N_CHANNELS].ReportRun.future(request, timeout=timeout)
            future.add_done_callback(lambda f, run_id=request.run_id: self._answered(run_id, f))
            self.futures.append(future)

    def _answered(self, run_id: str, future) -> None:
        try:
            answer = future.result()
        except grpc.RpcError as error:
            answer = error.code()
        with self.lock:
            self.answers[run_id] = (time.monotonic(), answer)
            if len(self.answers) == self.expected:
                self.done.set()
        if not isinstance(answer, grpc.StatusCode):
            self.acked.release()

    def wait_acks(self, n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        for _ in range(n):
            assert self.acked.acquire(timeout=max(0.0, deadline - time.monotonic())), "too slow"

    def finish(self, timeout: float = 120) -> dict:
        assert self.done.wait(timeout), f"{self.expected - len(self.answers)} calls never ended"
        for channel in self.channels:
            channel.close()
        return self.answers


def stored_run_ids(db_path) -> set[str]:
    """Straight from the file, as a fresh process would find it."""
    with sqlite3.connect(db_path) as conn:
        ids = [r[0] for r in conn.execute("SELECT run_id FROM runs")]
    assert len(ids) == len(set(ids))
    return set(ids)


def list_all(target: str) -> list[pb.Run]:
    with grpc.insecure_channel(target) as channel:
        return all_runs(pb_grpc.RecommenderServiceStub(channel), max_pages=N_RUNS)


def test_sigkill_mid_burst_then_resend_everything_stores_each_run_once(tmp_path):
    db_path = tmp_path / "runs.db"
    server = ServerProcess(f"sqlite:///{db_path}", tmp_path / "server.log")
    requests = [report(i) for i in range(N_RUNS)]
    try:
        server.start()
        burst = Burst(server.target, requests)
        burst.wait_acks(200)
        server.kill()
        answers = burst.finish()
        acked = {run_id for run_id, (_, a) in answers.items() if not isinstance(a, grpc.StatusCode)}
        assert 200 <= len(acked) < N_RUNS, "the kill did not land mid-burst"
        for run_id, (_, answer) in answers.items():
            if run_id in acked:
                assert answer.created
            else:  # the connection died under it
                assert answer in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                                  grpc.StatusCode.INTERNAL), answer
        # Every acknowledged run is on disk (some unacknowledged ones may be too).
        assert acked <= stored_run_ids(db_path)

        server.start()
        again = Burst(server.target, requests).finish()
        sent = {r.run_id: r for r in requests}
        for run_id, (_, answer) in again.items():
            assert not isinstance(answer, grpc.StatusCode), (run_id, answer)
            assert_is(answer.run, sent[run_id])
            if run_id in acked:  # stored before the kill: the retry returns the stored run
                assert not answer.created
        runs = list_all(server.target)
        assert len(runs) == N_RUNS == len({r.run_id for r in runs})
        for run in runs:
            assert_is(run, sent[run.run_id])
    finally:
        server.stop()


def test_sigterm_drains_calls_in_flight(tmp_path):
    """ReportRuns issued just before SIGTERM and large ListRuns pages still being read all finish
    (or, never having reached a handler, fail UNAVAILABLE and store nothing)."""
    db_path = tmp_path / "runs.db"
    # No refit during the drain: its process would take a core of the two this machine has, and
    # what is under test is the drain, not how fast a starved server hands calls over.
    server = ServerProcess(f"sqlite:///{db_path}", tmp_path / "server.log",
                           env={"HPARAMREC_REFIT_DEBOUNCE_SECONDS": "3600"})
    bulky = [report(i) for i in range(N_RUNS, N_RUNS + 1000)]
    for r in bulky:  # ~3 kB of metadata each: a full ListRuns page is ~3 MB of work
        r.metadata.update({f"k{j:02d}": "x" * 60 for j in range(45)})
    store = RunStore(f"sqlite:///{db_path}")  # stored before the start: the pages are ready
    try:
        assert store.add_many("default", [report_from_proto(r) for r in bulky]) == 1000
    finally:
        store.close()
    try:
        server.start()

        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.RecommenderServiceStub(channel)
            pages = [stub.ListRuns.future(pb.ListRunsRequest(page_size=1000), timeout=60)
                     for _ in range(4)]
            burst = Burst(server.target, [report(i) for i in range(300)])
            burst.wait_acks(10)
            signalled = time.monotonic()
            exit_code = server.terminate()
            answers = burst.finish()
            assert all(len(p.result().runs) == 1000 for p in pages)
        assert exit_code == 0, server.log()
        assert "draining" in server.log()
        ok = {run_id for run_id, (_, a) in answers.items() if not isinstance(a, grpc.StatusCode)}
        refused = {a for run_id, (_, a) in answers.items() if run_id not in ok}
        assert refused <= {grpc.StatusCode.UNAVAILABLE}, refused
        assert any(t > signalled for run_id, (t, _) in answers.items() if run_id in ok), \
            "no call was still in flight at SIGTERM"
        stored = stored_run_ids(db_path) - {r.run_id for r in bulky}
        assert stored == ok
    finally:
        server.stop()
