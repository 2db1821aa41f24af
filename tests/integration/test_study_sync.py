"""A run reported against an explore trial is stored, then told to its study (Refiner.tell).
When the tell never happens (the process died in between, or the tell raised), the study
catches up on the stored run at its next sync (predictor/study_sync.py) as the tell would
have, and the tell, if it comes after all, finds the run told: each run reaches the study once,
whichever comes first. The failed hand-off is simulated by storing the run through the store,
as ReportRun does, without telling it."""

import threading

import pytest
from optuna.trial import TrialState

from benchmark_db.records import Hyperparameters, Pins, RunOutcome, RunReport, RunStatus, resolve_spec
from benchmark_db.store import RunStore
from predictor.refine import Refiner
from predictor.registry import ModelRegistry
from predictor.study import study_name
from tests.integration.test_refine import backdate

pytestmark = pytest.mark.integration
TENANT = "default"
SPEC = resolve_spec(n_params=1e9, n_tokens=2e10)
PINS = Pins(weight_decay=0.1)
NAME = study_name(TENANT, SPEC, PINS)
TIMEOUT = 3600.0


class Replica:
    """What one server process holds: a store, a registry (the prior: nothing to fit) and a
    refiner, with its own watermarks and locks."""

    def __init__(self, url: str):
        self.store = RunStore(url)
        self.registry = ModelRegistry(self.store, "prior")
        self.refiner = Refiner(self.store, self.registry, trial_timeout_seconds=TIMEOUT)

    def explore(self):
        return self.refiner.explore(TENANT, SPEC, PINS)

    def exploit(self):
        return self.refiner.exploit(TENANT, SPEC, PINS)

    def store_only(self, rec, run_id: str, loss: float | None = 2.5, status=RunStatus.COMPLETED,
                   lr_factor: float = 1.0):
        """The first half of ReportRun: the run is committed; its tell never comes."""
        report = RunReport(
            run_id=run_id, spec=SPEC, trial_id=rec.trial_id,
            hyperparameters=Hyperparameters(lr=rec.lr * lr_factor, batch_size_tokens=rec.batch_size_tokens,
                                            weight_decay=rec.weight_decay, qat_fraction=rec.qat_fraction),
            outcome=RunOutcome(status=status, final_loss=loss))
        run, created = self.store.report(TENANT, report)
        assert created
        return run

    def report(self, rec, run_id: str, loss: float = 2.5):
        """The whole of ReportRun: stored, then told."""
        run = self.store_only(rec, run_id, loss)
        self.refiner.tell(TENANT, run)
        return run

    def trials(self):
        return self.refiner.studies.load(NAME).get_trials()

    def close(self):
        self.refiner.close()
        self.registry.close()
        self.store.close()


@pytest.fixture
def replicas(database_url):
    """Two replicas on one fresh database (several replicas need PostgreSQL: on SQLite the
    second one only reads)."""
    made = [Replica(database_url), Replica(database_url)]
    yield made
    for replica in made:
        replica.close()


def carried(trials, run_id: str) -> list:
    return [t for t in trials if t.user_attrs.get("run_id") == run_id]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("read", ["explore", "exploit"])
def test_a_run_whose_tell_never_came_closes_its_trial_at_the_next_read(replicas, read):
    server = replicas[0]
    trial = server.explore()
    run = server.store_only(trial, "a", 2.5)
    assert [t.state for t in server.trials()] == [TrialState.RUNNING]  # the hand-off failed

    rec = getattr(server, read)()
    first = server.trials()[0]
    assert (first.state, first.value) == (TrialState.COMPLETE, 2.5)
    assert {k: v for k, v in first.user_attrs.items() if k != "model_version"} == \
        {"run_id": "a", "outcome": "completed"}  # what the report's tell records
    assert first.params["lr"] == trial.lr
    if read == "exploit":
        assert "completed=1" in rec.model_versions[0]  # the exploit knows the run at once

    before = server.trials()
    server.refiner.tell(TENANT, run)  # the tell comes after all (a retry): nothing changes
    server.exploit()
    assert server.trials() == before and len(carried(before, "a")) == 1


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_diverged_run_whose_tell_never_came_closes_its_trial_as_failed(replicas):
    server = replicas[0]
    trial = server.explore()
    run = server.store_only(trial, "d", 7.0, status=RunStatus.DIVERGED)

    rec = server.exploit()
    first = server.trials()[0]
    assert first.state is TrialState.FAIL and first.value is None
    assert first.user_attrs["outcome"] == "diverged" and first.user_attrs["last_loss"] == 7.0
    assert "diverged=1" in rec.model_versions[0]  # the GP learns the lr was too high
    server.refiner.tell(TENANT, run)
    assert len(server.trials()) == 1 and len(carried(server.trials(), "d")) == 1


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_run_of_a_timed_out_trial_whose_tell_never_came_is_added_once(replicas, database_url):
    server, other = replicas
    abandoned = server.explore()
    backdate(database_url, abandoned.trial_id, TIMEOUT + 60)
    server.explore()  # closes the abandoned trial as timed out, hands out another
    run = server.store_only(abandoned, "late", 2.5)

    server.exploit()
    trials = server.trials()
    assert trials[0].state is TrialState.FAIL and "timed_out" in trials[0].user_attrs
    assert trials[1].state is TrialState.RUNNING
    (late,) = carried(trials, "late")
    assert (late.state, late.value, late.params["lr"]) == (TrialState.COMPLETE, 2.5, abandoned.lr)
    assert late.user_attrs["reported_trial_id"] == abandoned.trial_id  # as a late report records
    assert late.user_attrs["source"] == "reported configuration"

    server.refiner.tell(TENANT, run)  # the late tell, after all
    other.exploit()  # a sync that has seen nothing yet (another process, a restart)
    server.explore()
    assert len(carried(server.trials(), "late")) == 1
    assert len(server.trials()) == len(trials) + 1  # only the new explore trial


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_run_with_other_values_whose_tell_never_came_supersedes_its_trial(replicas):
    server = replicas[0]
    trial = server.explore()
    run = server.store_only(trial, "own", 2.6, lr_factor=2.0)  # not the trial's values

    server.exploit()
    first, own = server.trials()
    assert first.state is TrialState.FAIL and first.user_attrs["superseded_by_run"] == "own"
    assert (own.state, own.value, own.params["lr"]) == (TrialState.COMPLETE, 2.6, 2 * trial.lr)
    assert own.user_attrs["reported_trial_id"] == trial.trial_id
    server.refiner.tell(TENANT, run)
    assert len(server.trials()) == 2


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_told_run_is_not_told_again_by_a_sync_and_a_stranded_one_is_told_once(replicas):
    server, other = replicas
    told, stranded = server.explore(), server.explore()
    server.report(told, "told", 2.45)  # tell, then sync
    run = server.store_only(stranded, "stranded", 2.55)

    other.exploit()  # a fresh sync reads every stored run
    server.exploit()
    trials = server.trials()
    assert [(t.state, t.value, t.user_attrs.get("run_id")) for t in trials] == [
        (TrialState.COMPLETE, 2.45, "told"), (TrialState.COMPLETE, 2.55, "stranded")]
    server.refiner.tell(TENANT, run)  # sync, then tell
    other.exploit()
    assert server.trials() == trials


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_replicas_racing_reports_and_syncs_tell_each_run_once(replicas):
    """Replica A stores runs against its trials and tells every other one (the rest lose
    their tell) while replica B syncs the study over and over: whichever comes first, each
    run is in the study once, and every trial is closed by its run."""
    a, b = replicas
    trials = [a.explore() for _ in range(6)]
    study = b.refiner.studies.load(NAME)
    done = threading.Event()
    errors = []

    def reports():
        try:
            for k, trial in enumerate(trials):
                run = a.store_only(trial, f"r{k}", 2.5 + k / 100)
                if k % 2 == 0:
                    a.refiner.tell(TENANT, run)
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)
        finally:
            done.set()

    def syncs():
        try:
            while not done.is_set():
                b.refiner.sync.sync(TENANT, SPEC, study)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=reports), threading.Thread(target=syncs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    b.exploit()  # after the last run was stored
    got = a.trials()
    assert [t.user_attrs.get("run_id") for t in got] == [f"r{k}" for k in range(6)]
    assert [t.value for t in got] == pytest.approx([2.5 + k / 100 for k in range(6)])
    assert all(t.state is TrialState.COMPLETE for t in got)
