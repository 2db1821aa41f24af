"""Two `hparamrec serve` processes on one PostgreSQL, as behind a load balancer."""

import time
from concurrent import futures

import grpc
import pytest

from clients.client import spec
from hparamrec.v1 import recommender_pb2 as pb
from hparamrec.v1 import recommender_pb2_grpc as pb_grpc
from tests.integration.server_process import ServerProcess

pytestmark = pytest.mark.integration
# Fast refits and a fast poll, so the test need not wait for the production defaults.
FAST = {"HPARAMREC_REFIT_DEBOUNCE_SECONDS": "0.1", "HPARAMREC_REFIT_POLL_SECONDS": "0.5"}


def report(run_id: str, loss: float = 2.5) -> pb.ReportRunRequest:
    return pb.ReportRunRequest(
        run_id=run_id, spec=spec(n_params=1e9, n_tokens=2e10),
        hyperparameters=pb.Hyperparameters(lr=1e-3, batch_size_tokens=1e6, weight_decay=0.1),
        outcome=pb.RunOutcome(status=pb.RUN_STATUS_COMPLETED, final_loss=loss),
        metadata={"sent": run_id})


@pytest.fixture
def replicas(database_url, tmp_path):
    servers = [ServerProcess(database_url, tmp_path / f"replica{i}.log", env=FAST) for i in (0, 1)]
    channels = []
    try:
        for server in servers:  # both start at once on the same empty database: migrations race
            server.launch()
        for server in servers:
            server.wait_serving(timeout=60)
        channels = [grpc.insecure_channel(s.target) for s in servers]
        yield [pb_grpc.RecommenderServiceStub(c) for c in channels]
    finally:
        for channel in channels:
            channel.close()
        for server in servers:
            server.stop()


def fitted_on(stub) -> str:
    """The lr source of a spec without a study: names the runs the replica's model was fitted on."""
    rec = stub.Recommend(pb.RecommendRequest(spec=spec(n_params=5e8, n_tokens=1e10)), timeout=10)
    return next((s.detail for s in rec.recommendation.sources if s.field == "lr"), "")


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_two_replicas_share_runs_and_refits(replicas, database_url):
    a, b = replicas
    assert "fitted on" not in fitted_on(a) + fitted_on(b)  # the published-law prior serves

    # A run reported through one replica is visible through the other at once.
    stored = a.ReportRun(report("first"), timeout=10)
    assert stored.created
    assert b.GetRun(pb.GetRunRequest(run_id="first"), timeout=10).run == stored.run
    assert [r.run_id for r in b.ListRuns(pb.ListRunsRequest(), timeout=10).runs] == ["first"]

    # EXPLORE through both at once: one refinement study of the spec, whichever created it.
    explore = pb.RecommendRequest(spec=spec(n_params=1e9, n_tokens=2e10), mode=pb.MODE_EXPLORE)
    with futures.ThreadPoolExecutor(4) as pool:
        trials = [f.result().recommendation.trial_id
                  for f in [pool.submit(stub.Recommend, explore, timeout=60) for stub in (a, b, a, b)]]
    assert all(trials) and len(set(trials)) == 4

    # The same run_ids through both replicas at once: each stored exactly once, and exactly
    # one of its two reports created it; both answers carry the one stored run.
    run_ids = [f"r{i:03d}" for i in range(100)]
    with futures.ThreadPoolExecutor(16) as pool:
        answers = {(run_id, replica): pool.submit(stub.ReportRun, report(run_id), timeout=30)
                   for run_id in run_ids for replica, stub in enumerate((a, b))}
        answers = {k: f.result() for k, f in answers.items()}
    for run_id in run_ids:
        first, second = answers[(run_id, 0)], answers[(run_id, 1)]
        assert first.created + second.created == 1
        assert first.run == second.run and first.run.metadata == {"sent": run_id}
    listed = a.ListRuns(pb.ListRunsRequest(page_size=1000), timeout=10).runs
    assert sorted(r.run_id for r in listed) == sorted(run_ids + ["first"])

    # Both replicas refit on all 101 runs, whichever replica each run came through; a
    # replica that took no report itself learns of runs only through its poll.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        details = fitted_on(a), fitted_on(b)
        if all("fitted on 101 runs" in d for d in details):
            break
        time.sleep(0.2)
    assert all("fitted on 101 runs" in d for d in details), details

    # The study exists once, and holds each run once however many replicas told it.
    storage = optuna_storage(database_url)
    studies = storage.get_all_studies()
    assert len(studies) == 1
    told = [t.user_attrs["run_id"] for t in storage.get_all_trials(studies[0]._study_id)
            if "run_id" in t.user_attrs]
    assert sorted(told) == sorted(run_ids + ["first"])


def optuna_storage(database_url: str):
    import optuna
    import sqlalchemy as sa

    url = sa.make_url(database_url).set(drivername="postgresql+psycopg")
    return optuna.storages.RDBStorage(url.render_as_string(hide_password=False))


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_replica_that_took_no_report_refits_by_polling(replicas):
    a, b = replicas
    for i in range(3):
        a.ReportRun(report(f"p{i}"), timeout=10)
    deadline = time.monotonic() + 20
    while "fitted on 3 runs" not in fitted_on(b) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "fitted on 3 runs" in fitted_on(b)
