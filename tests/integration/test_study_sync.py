"""A run reported against an explore trial is stored, then told to its study (Refiner.tell).
When the tell never happens (the process died in between, or the tell raised), the study
catches up on the stored run at its next sync (predictor/study_sync.py) as the tell would
have, and the tell, if it comes after all, finds the run told: each run reaches the study once,
whichever comes first. The failed hand-off is simulated by storing the run through the store,
as ReportRun does, without telling it.

A run of another size than its trial's (the launcher ran a different model than the trial was
handed out for) is outside the size bins the study reads its runs from; its lost tell is made
good by the study's next sync all the same, as the tell would have: the trial is closed as
superseded, and the run reaches the studies of its own spec."""

import threading

import numpy as np
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from benchmark_db.records import Hyperparameters, Pins, RunOutcome, RunReport, RunStatus, resolve_spec
from benchmark_db.store import RunStore
from predictor.recommendation import HYPERPARAMETERS
from predictor.refine import Refiner
from predictor.registry import ModelRegistry
from predictor.study import study_name
from predictor.table import RunTable
from tests.integration.test_refine import backdate

pytestmark = pytest.mark.integration
TENANT = "default"
SPEC = resolve_spec(n_params=1e9, n_tokens=2e10)
PINS = Pins(weight_decay=0.1)
NAME = study_name(TENANT, SPEC, PINS)
OTHER = resolve_spec(n_params=2e9, n_tokens=4e10)  # another size: outside NAME's bins
OTHER_NAME = study_name(TENANT, OTHER, PINS)
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

    def exploit(self, spec=SPEC):
        return self.refiner.exploit(TENANT, spec, PINS)

    def predict_loss(self, rec):
        values = (np.array([getattr(rec, n)]) for n in HYPERPARAMETERS)
        queries = RunTable.queries(SPEC, *values)
        return self.refiner.predict_loss(TENANT, SPEC, queries)

    def store_only(self, rec, run_id: str, loss: float | None = 2.5, status=RunStatus.COMPLETED,
                   lr_factor: float = 1.0, spec=SPEC):
        """The first half of ReportRun: the run is committed; its tell never comes."""
        report = RunReport(
            run_id=run_id, spec=spec, trial_id=rec.trial_id,
            hyperparameters=Hyperparameters(lr=rec.lr * lr_factor, batch_size_tokens=rec.batch_size_tokens,
                                            weight_decay=rec.weight_decay, qat_fraction=rec.qat_fraction),
            outcome=RunOutcome(status=status, final_loss=loss))
        run, created = self.store.report(TENANT, report)
        assert created
        return run

    def report(self, rec, run_id: str, loss: float = 2.5, spec=SPEC):
        """The whole of ReportRun: stored, then told."""
        run = self.store_only(rec, run_id, loss, spec=spec)
        self.refiner.tell(TENANT, run)
        return run

    def trials(self, name=NAME):
        return self.refiner.studies.load(name).get_trials()

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


def race_reports_and_syncs(a, b, trials, spec) -> None:
    """Replica A stores a run of `spec` against each trial and tells every other one (the rest
    lose their tell) while replica B syncs the study over and over."""
    study = b.refiner.studies.load(NAME)
    done = threading.Event()
    errors = []

    def reports():
        try:
            for k, trial in enumerate(trials):
                run = a.store_only(trial, f"r{k}", 2.5 + k / 100, spec=spec)
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


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_replicas_racing_reports_and_syncs_tell_each_run_once(replicas):
    """Replica A stores runs against its trials and tells every other one (the rest lose
    their tell) while replica B syncs the study over and over: whichever comes first, each
    run is in the study once, and every trial is closed by its run."""
    a, b = replicas
    trials = [a.explore() for _ in range(6)]
    race_reports_and_syncs(a, b, trials, SPEC)
    b.exploit()  # after the last run was stored
    got = a.trials()
    assert [t.user_attrs.get("run_id") for t in got] == [f"r{k}" for k in range(6)]
    assert [t.value for t in got] == pytest.approx([2.5 + k / 100 for k in range(6)])
    assert all(t.state is TrialState.COMPLETE for t in got)


def summary(trial) -> tuple:
    """What telling a run leaves on a trial, the run's and trial's own ids and values left out."""
    attrs = {k: v for k, v in trial.user_attrs.items() if k not in ("model_version", "run_id")}
    attrs = {k: "<run>" if k == "superseded_by_run" else "<trial>" if k == "reported_trial_id"
             else v for k, v in attrs.items()}
    return trial.state, trial.value, attrs


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
@pytest.mark.parametrize("read", ["explore", "exploit", "predict_loss"])
def test_a_run_of_another_size_whose_tell_never_came_closes_its_trial_at_the_next_read(
        replicas, read):
    """The launcher ran another size than the trial was handed out for, and the tell was lost:
    the study's next read closes the trial as the tell would have (superseded by the run), and
    the run reaches the studies of its own spec once, as the tell's would."""
    server, other = replicas
    told, stranded = server.explore(), server.explore()
    server.refiner.explore(TENANT, OTHER, PINS)  # a study of the run's own spec exists
    server.exploit()  # the study has synced: its watermark is taken before the runs come
    server.report(told, "told", 2.45, spec=OTHER)  # what a tell that happens leaves
    run = server.store_only(stranded, "stranded", 2.45, spec=OTHER)
    assert [t.state for t in server.trials()] == [TrialState.FAIL, TrialState.RUNNING]

    getattr(server, read)(*([told] if read == "predict_loss" else []))
    first, second = server.trials()[:2]
    assert second.state is TrialState.FAIL and second.user_attrs["superseded_by_run"] == "stranded"
    assert summary(second) == summary(first)  # as the tell left the other trial
    assert not carried(server.trials(), "stranded")  # not a run of this study's spec
    server.exploit(OTHER)  # the run reaches its own spec's study (as the tell's run did)
    (own,) = carried(server.trials(OTHER_NAME), "stranded")
    (told_own,) = carried(server.trials(OTHER_NAME), "told")
    assert summary(own) == summary(told_own)
    assert own.user_attrs["reported_trial_id"] == stranded.trial_id

    before, before_other = server.trials(), server.trials(OTHER_NAME)
    server.refiner.tell(TENANT, run)  # the tell comes after all: nothing changes
    other.exploit()  # a sync that has seen nothing yet (another process, a restart)
    other.exploit(OTHER)
    server.explore()
    assert server.trials()[:len(before)] == before
    assert len(server.trials()) == len(before) + 1  # only the new explore trial
    assert server.trials(OTHER_NAME) == before_other


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_run_of_another_size_closes_a_trial_that_never_times_out(database_url):
    """Without trial time-outs, nothing else would ever close the trial."""
    replica = Replica(database_url)
    replica.refiner.trial_timeout_seconds = 0.0
    try:
        trial = replica.explore()
        replica.store_only(trial, "elsewhere", 2.5, spec=OTHER)
        replica.explore()
        first, second = replica.trials()
        assert first.state is TrialState.FAIL
        assert first.user_attrs["superseded_by_run"] == "elsewhere"
        assert second.state is TrialState.RUNNING
    finally:
        replica.close()


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_the_sync_is_one_query_when_nothing_changed(replicas):
    """The hot path: an exploit whose study has nothing new to learn from stored runs pays one
    statement for the sync, whether or not runs of other sizes were reported against it."""
    server = replicas[0]
    trial = server.explore()
    server.explore()
    server.store_only(trial, "elsewhere", 2.5, spec=OTHER)
    study = server.refiner.studies.load(NAME)
    assert server.refiner.sync.sync(TENANT, SPEC, study) == 0  # closes the trial (no run added)
    assert server.trials()[0].user_attrs["superseded_by_run"] == "elsewhere"
    server.refiner.sync.sync(TENANT, SPEC, study)  # the closed trial's run left the watermark
    statements = []

    def count(*args):
        statements.append(args[2])

    engines = {server.store.engine, server.refiner.studies.storage().engine}
    for engine in engines:
        sa.event.listen(engine, "before_cursor_execute", count)
    try:
        assert server.refiner.sync.sync(TENANT, SPEC, study) == 0
    finally:
        for engine in engines:
            sa.event.remove(engine, "before_cursor_execute", count)
    assert len(statements) == 1, statements


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_replicas_racing_reports_of_another_size_and_syncs_tell_each_run_once(replicas):
    """As above, with runs of another size than their trials': every trial ends superseded by
    its run, and each run is in the study of its own spec once."""
    a, b = replicas
    trials = [a.explore() for _ in range(6)]
    a.refiner.explore(TENANT, OTHER, PINS)
    race_reports_and_syncs(a, b, trials, OTHER)
    b.exploit()  # after the last run was stored
    got = a.trials()
    assert [t.user_attrs.get("superseded_by_run") for t in got] == [f"r{k}" for k in range(6)]
    assert all(t.state is TrialState.FAIL and "run_id" not in t.user_attrs for t in got)
    b.exploit(OTHER)
    own = a.trials(OTHER_NAME)
    assert sorted(t.user_attrs.get("run_id") for t in own if "run_id" in t.user_attrs) == \
        [f"r{k}" for k in range(6)]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_second_run_of_another_size_is_found_though_as_many_are_counted(replicas):
    """The runs reported against running trials leave the watermark when their trials close:
    after the first stranded run is settled, a second one makes the count what it was, and
    the largest id tells them apart."""
    server = replicas[0]
    first, second = server.explore(), server.explore()
    server.store_only(first, "one", 2.5, spec=OTHER)
    server.exploit()  # counts "one", closes its trial
    server.store_only(second, "two", 2.5, spec=OTHER)
    server.exploit()
    assert [t.user_attrs.get("superseded_by_run") for t in server.trials()] == ["one", "two"]


def test_a_replica_that_read_a_study_sees_what_another_one_did_to_it_since(replicas):
    """Each replica keeps the finished trials of the studies it read (Studies.load): the trials
    another replica finished or added since are read again all the same."""
    a, b = replicas
    first = a.explore()
    assert [t.state for t in a.trials()] == [TrialState.RUNNING]  # a has read the study
    b.report(first, "run-1", loss=2.4)
    second = b.explore()
    states = {t.number: t.state for t in a.trials()}
    assert states == {0: TrialState.COMPLETE, 1: TrialState.RUNNING}
    assert a.trials()[0].value == pytest.approx(2.4)
    b.report(second, "run-2", loss=2.3)
    assert [t.value for t in a.trials()] == pytest.approx([2.4, 2.3])


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_replicas_exploring_and_reporting_at_once_keep_the_study_as_stored(replicas, database_url):
    """Each replica keeps the finished trials it read; with both asking and telling at once on
    one study, what each one sees is still what the database holds."""
    import optuna

    errors = []

    def launcher(replica, k):
        try:
            for j in range(4):
                trial = replica.explore()
                replica.report(trial, f"r{k}-{j}", loss=2.5 + (4 * k + j) / 1000)
                replica.exploit()
        except Exception as exc:  # reported below, with the thread's number
            errors.append((k, exc))

    threads = [threading.Thread(target=launcher, args=(replicas[k % 2], k)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    stored = optuna.load_study(study_name=NAME, storage=replicas[0].refiner.studies.url)
    truth = [(t.number, t.state, t.value, t.user_attrs.get("run_id")) for t in stored.get_trials()]
    assert len(truth) == 16 and all(state is TrialState.COMPLETE for _, state, _, _ in truth)
    for replica in replicas:
        seen = [(t.number, t.state, t.value, t.user_attrs.get("run_id")) for t in replica.trials()]
        assert seen == truth
