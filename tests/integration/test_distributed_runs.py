"""A distributed job (2 processes under torchrun, gloo on CPU) trains one run: rank 0 fetches the
recommendation and every process trains with it, so an explore hands out one trial per job,
and only rank 0 reports. The jobs are real: torchrun starts distributed_job.py, which trains
through tracked_run, the transformers callback or the Lightning callback against a real server.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from clients import Client
from predictor.study import _storage_url

pytestmark = [pytest.mark.integration, pytest.mark.slow]
pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]
JOB = Path(__file__).with_name("distributed_job.py")


@pytest.fixture
def database_url(tmp_path):
    return f"sqlite:///{tmp_path / 'svc.db'}"


def run_job(framework: str, target: str, mode: str, out: Path) -> subprocess.CompletedProcess:
    out.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "HPARAMREC_RUN_ID": ""}
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(JOB), framework, target, mode, str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


def trials_of(url: str) -> list[optuna.trial.FrozenTrial]:
    storage = optuna.storages.RDBStorage(_storage_url(url))
    try:
        return [trial for summary in optuna.get_all_study_summaries(storage)
                for trial in optuna.load_study(study_name=summary.study_name, storage=storage).trials]
    finally:
        storage.engine.dispose()


@pytest.mark.parametrize("framework", ["tracked_run", "transformers", "lightning"])
def test_the_processes_of_a_distributed_job_train_one_trial_and_report_it_once(
        framework, target, service, tmp_path):
    job = run_job(framework, target, "explore", tmp_path)
    assert job.returncode == 0, job.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["trial_id"] and ranks[0]["trial_id"] == ranks[1]["trial_id"]
    values = ("lr", "batch_size_tokens", "weight_decay")
    assert [ranks[0][k] for k in values] == [ranks[1][k] for k in values]
    assert [r["reported"] for r in ranks] == [True, False]
    if framework != "tracked_run":  # a custom loop logs what it is given: here, its own loss
        # The callbacks log the mean over the processes, which train on different batches.
        assert ranks[0]["last_loss"] == pytest.approx(ranks[1]["last_loss"], rel=1e-6)
    trials = trials_of(service.settings.database_url)
    # One trial handed out per job, not one per process, and none left pending. (The callbacks'
    # 2 processes x 4 samples cannot make the trial's batch of 7 samples, so their report also
    # adds the run's own configuration, as any such report does.)
    handed_out = [t for t in trials if t.user_attrs.get("source") != "reported configuration"]
    assert len(handed_out) == 1 and handed_out[0].state.name != "RUNNING"
    assert all(t.state.name != "RUNNING" for t in trials)
    with Client(target) as client:
        runs = client.list_runs().runs
    assert [(r.run_id, r.trial_id) for r in runs] == [("dist-job", ranks[0]["trial_id"])]


def test_an_exploit_job_asks_again_at_its_batch_once_for_every_process(target, tmp_path):
    """2 processes x 4 samples cannot make the recommended 7: the transformers callback asks
    again with the batch pinned, and both processes train rank 0's answer to that."""
    job = run_job("transformers", target, "exploit", tmp_path)
    assert job.returncode == 0, job.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == {**ranks[1], "reported": True} and not ranks[0]["trial_id"]
    assert ranks[0]["batch_size_tokens"] == 2 * 4 * 16
    with Client(target) as client:
        stored = client.get_run("dist-job")
    assert (stored.hyperparameters.lr, stored.hyperparameters.batch_size_tokens) == (
        ranks[0]["lr"], ranks[0]["batch_size_tokens"])


def test_an_error_fetching_on_rank_zero_stops_every_process(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        nobody = f"127.0.0.1:{s.getsockname()[1]}"
    job = run_job("tracked_run", nobody, "explore", tmp_path)
    assert job.returncode != 0
    assert "rank 0 could not fetch the run's recommendation (UnavailableError" in job.stderr
    assert not list(tmp_path.glob("rank*.json"))
