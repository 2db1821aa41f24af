"""The refinement loop through a real server: explore, report, exploit, Optuna's view."""

import math
import threading
from datetime import timedelta

import optuna
import pytest
import sqlalchemy as sa

from benchmark_db.importers import import_file
from benchmark_db.records import Pins, resolve_spec
from benchmark_db.store import RunStore
from clients.client import Client
from clients.errors import InvalidArgumentError
from clients.models import Pins as ClientPins
from clients.models import RunOutcome, RunReport, TrainingSpec
from predictor.refine import Refiner
from predictor.registry import ModelRegistry
from predictor.sampler import MIN_DISTANCE
from predictor.study import _storage_url, study_name
from tests.factories import sweep_loss, synthetic_sweep, true_optimum
from tests.integration.in_process_server import QUICK_REFITS, running_service
from tests.integration.test_auth import keys, db_url  # noqa: F401  (fixtures)

pytestmark = pytest.mark.integration
SPEC = TrainingSpec(n_params=1e9, n_tokens=2e10)
PINS = ClientPins(weight_decay=0.1)


def study_of(url: str, tenant: str = "default") -> optuna.Study:
    name = study_name(tenant, resolve_spec(n_params=1e9, n_tokens=2e10), Pins(weight_decay=0.1))
    return optuna.load_study(study_name=name, storage=url)


def report(rec, loss=2.5, run_id="", status="completed", trial_id=None) -> RunReport:
    outcome = RunOutcome.completed(loss) if status == "completed" else RunOutcome(status=status)
    return RunReport(run_id=run_id, spec=SPEC, hyperparameters=rec.hyperparameters, outcome=outcome,
                     trial_id=rec.trial_id if trial_id is None else trial_id)


def test_explore_report_explore_and_optuna_sees_the_trials(client, service):
    exploit = client.recommend(SPEC, PINS)
    first = client.recommend(SPEC, PINS, mode="explore")
    assert first.trial_id and not exploit.trial_id
    assert (first.lr, first.batch_size_tokens) == (exploit.lr, exploit.batch_size_tokens)
    assert client.report_run(report(first, 2.50, "a")).run.trial_id == first.trial_id
    second = client.recommend(SPEC, PINS, mode="explore")
    assert second.trial_id != first.trial_id
    assert (second.lr, second.batch_size_tokens) != (first.lr, first.batch_size_tokens)
    client.report_run(report(second, 2.49, "b"))
    client.report_run(report(second, 2.49, "b"))  # re-sent: told once
    third = client.recommend(SPEC, PINS, mode="explore")
    client.report_run(report(third, run_id="c", status="diverged"))

    trials = study_of(service.settings.database_url).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2 + [optuna.trial.TrialState.FAIL]
    assert [t.value for t in trials[:2]] == [2.50, 2.49]
    assert trials[2].user_attrs["outcome"] == "diverged" and trials[2].params["lr"] == third.lr
    assert [t.user_attrs["run_id"] for t in trials] == ["a", "b", "c"]
    assert trials[0].params["batch_size_tokens"] == first.batch_size_tokens

    conditioned = client.recommend(SPEC, PINS)
    assert conditioned.model_versions[0].startswith("study-gp@1")
    assert any(s.name == "refine" for s in conditioned.sources)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_explore_with_every_hyperparameter_pinned_is_refused(client, service):
    """Each explore handed out a new trial of the same pinned values."""
    pins = ClientPins(lr=1e-3, batch_size_tokens=1 << 20, weight_decay=0.1)
    with pytest.raises(InvalidArgumentError) as exc:
        client.recommend(SPEC, pins, mode="explore")
    [(field, reason)] = exc.value.field_violations
    assert field == "pins" and "nothing to explore" in reason
    assert client.recommend(SPEC, pins).lr == 1e-3  # exploit still answers


def test_exploit_heeds_a_diverged_run_reported_without_an_explore(client, service):
    """The recommendation's lr had diverged for this spec and batch, reported by the user's own
    run: exploit kept recommending above it until someone explored the spec."""
    before = client.recommend(SPEC, PINS)
    client.report_run(RunReport(  # a completed one: the model refits on it, no study needed
        run_id="own-completed", spec=SPEC, outcome=RunOutcome.completed(2.5),
        hyperparameters=before.hyperparameters.model_copy(update={"lr": 0.5 * before.lr})))
    service.registry.wait_idle(60)
    kept = client.recommend(SPEC, PINS)
    assert not kept.model_versions[0].startswith("study-gp@1")
    with pytest.raises(KeyError):
        study_of(service.settings.database_url)
    lr = 0.8 * kept.lr
    client.report_run(RunReport(
        run_id="own-diverged", spec=SPEC, outcome=RunOutcome(status="diverged"),
        hyperparameters=kept.hyperparameters.model_copy(update={"lr": lr})))
    after = client.recommend(SPEC, PINS)
    assert after.lr < lr
    assert after.model_versions[0].startswith("study-gp@1") and ":diverged=1" in after.model_versions[0]
    assert len(study_of(service.settings.database_url).trials) == 2


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_user_configurations_without_a_trial_are_used_once(client, service):
    rec = client.recommend(SPEC, PINS)

    def mine(run_id, factor, loss):
        own = rec.hyperparameters.model_copy(update={"lr": rec.lr * factor})
        return RunReport(run_id=run_id, spec=SPEC, hyperparameters=own, outcome=RunOutcome.completed(loss))

    assert client.report_run(mine("before", 1.7, 2.6)).created  # no study yet: stored only
    assert not client.report_run(mine("before", 1.7, 2.6)).created
    trial = client.recommend(SPEC, PINS, mode="explore")  # the new study starts with it
    assert trial.trial_id.endswith("-1")
    client.report_run(mine("after", 0.5, 2.7))  # the study exists: added at once
    client.report_run(mine("after", 0.5, 2.7))
    trials = study_of(service.settings.database_url).trials
    assert [(t.user_attrs.get("run_id"), t.state.name, t.value) for t in trials] == [
        ("before", "COMPLETE", 2.6), (None, "RUNNING", None), ("after", "COMPLETE", 2.7)]
    assert trials[0].params["lr"] == rec.lr * 1.7


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_user_run_reaches_every_study_whose_pins_it_satisfies(client, service):
    client.recommend(SPEC, mode="explore")  # the unpinned study
    client.recommend(SPEC, PINS, mode="explore")  # weight decay pinned to 0.1
    client.recommend(SPEC, ClientPins(weight_decay=0.3), mode="explore")
    rec = client.recommend(SPEC, PINS)
    client.report_run(RunReport(run_id="mine", spec=SPEC, hyperparameters=rec.hyperparameters,
                                outcome=RunOutcome.completed(2.6)))
    url = service.settings.database_url

    def told(pins):
        name = study_name("default", resolve_spec(n_params=1e9, n_tokens=2e10), pins)
        return [t.user_attrs.get("run_id") for t in optuna.load_study(study_name=name, storage=url).trials]

    assert told(Pins()) == [None, "mine"]
    assert told(Pins(weight_decay=0.1)) == [None, "mine"]
    assert told(Pins(weight_decay=0.3)) == [None]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_unknown_trial_ids_are_refused_before_storing(client):
    rec = client.recommend(SPEC, PINS, mode="explore")
    study, number = rec.trial_id.split("-")
    # Only the id as handed out names the trial: a zero-padded one would be stored under a
    # name that the lookup of a study's runs by trial id does not match.
    for bad in ("999-0", "nonsense", f"0{study}-{number}", f"{study}-0{number}"):
        with pytest.raises(InvalidArgumentError, match="trial_id"):
            client.report_run(report(rec, run_id="x", trial_id=bad))
    assert client.list_runs().runs == []


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_report_with_other_values_closes_the_trial_and_counts_as_its_own(client, service):
    trial = client.recommend(SPEC, PINS, mode="explore")
    changed = report(trial, 2.5, "changed").model_copy(update={
        "hyperparameters": trial.hyperparameters.model_copy(update={"lr": trial.lr * 2})})
    client.report_run(changed)
    trials = study_of(service.settings.database_url).trials
    assert trials[0].state is optuna.trial.TrialState.FAIL
    assert trials[0].user_attrs["superseded_by_run"] == "changed"
    assert trials[1].params["lr"] == trial.lr * 2 and trials[1].value == 2.5


def explore_concurrently(target: str, launchers: int, **options) -> list:
    """What `launchers` clients, each in its own thread, got from one explore each."""
    results, errors = [], []

    def explore():
        try:
            with Client(target, retries=0, timeout=60) as c:
                results.append(c.recommend(SPEC, PINS, mode="explore", **options))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=explore) for _ in range(launchers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    return results


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_concurrent_explorers_get_distinct_trials(target):
    results = explore_concurrently(target, 4)
    assert len({r.trial_id for r in results}) == 4
    assert len({(r.lr, r.batch_size_tokens) for r in results}) == 4


def explore_on_two_replicas(database_url: str, **options) -> list:
    """What two refiners on one database, as two replicas, each asked twice at once, handed out."""
    stores = [RunStore(database_url) for _ in range(2)]
    registries = [ModelRegistry(s, "prior") for s in stores]
    refiners = [Refiner(s, r) for s, r in zip(stores, registries)]
    spec = resolve_spec(n_params=1e9, n_tokens=2e10)
    results = []
    threads = [threading.Thread(target=lambda r=r: results.append(
                   r.explore("t", spec, Pins(weight_decay=0.1), **options)))
               for r in refiners for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for refiner, registry, store in zip(refiners, registries, stores):
        refiner.close()
        registry.close()
        store.close()
    assert len(results) == 4  # no ask failed
    return results


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_replicas_on_postgresql_serialise_asks(database_url):
    """Two refiners on one PostgreSQL, as two replicas: the advisory lock keeps them apart."""
    results = explore_on_two_replicas(database_url)
    assert len({r.trial_id for r in results}) == 4
    assert len({(r.lr, r.batch_size_tokens) for r in results}) == 4


def test_studies_are_isolated_between_tenants(db_url, keys):  # noqa: F811
    with running_service(db_url, auth_disabled=False, refit_debounce_seconds=QUICK_REFITS) as svc:
        target = f"127.0.0.1:{svc.port}"
        with Client(target, api_key=keys["alice"], retries=0) as alice, \
                Client(target, api_key=keys["bob"], retries=0) as bob:
            trial = alice.recommend(SPEC, PINS, mode="explore")
            with pytest.raises(InvalidArgumentError, match="trial_id"):
                bob.report_run(report(trial, run_id="steal"))
            theirs = bob.recommend(SPEC, PINS, mode="explore")
            assert theirs.trial_id != trial.trial_id
            alice.report_run(report(trial, 2.4, "a1"))
        assert [t.user_attrs.get("run_id") for t in study_of(db_url, "alice").trials] == ["a1"]
        assert [t.state.name for t in study_of(db_url, "bob").trials] == ["RUNNING"]


def backdate(url: str, trial_id: str, seconds: float) -> None:
    """Moves a trial's start into the past, as if it had been handed out `seconds` ago."""
    study_id, number = (int(x) for x in trial_id.split("-"))
    engine = sa.create_engine(_storage_url(url))
    trials = sa.table("trials", sa.column("study_id"), sa.column("number"),
                      sa.column("datetime_start", sa.DateTime))  # Optuna's RDB schema
    with engine.begin() as conn:
        start = conn.scalar(sa.select(trials.c.datetime_start).where(
            trials.c.study_id == study_id, trials.c.number == number))
        conn.execute(trials.update().where(trials.c.study_id == study_id, trials.c.number == number)
                     .values(datetime_start=start - timedelta(seconds=seconds)))
    engine.dispose()


def scaled_distance(a, b) -> float:
    return math.hypot(math.log(a.lr / b.lr), math.log(a.batch_size_tokens / b.batch_size_tokens))


def test_an_abandoned_trial_times_out_and_its_late_report_still_counts(client, service):
    url, timeout = service.settings.database_url, service.settings.trial_timeout_seconds
    assert timeout > 0  # the default: a week
    abandoned = client.recommend(SPEC, PINS, mode="explore")
    backdate(url, abandoned.trial_id, timeout + 60)
    # No longer pending: the sampler stops avoiding it, and its configuration (the exploit
    # recommendation, the best guess) is handed out again.
    again = client.recommend(SPEC, PINS, mode="explore")
    assert (again.lr, again.batch_size_tokens) == (abandoned.lr, abandoned.batch_size_tokens)
    live = client.recommend(SPEC, PINS, mode="explore")  # `again` is live: avoided
    assert scaled_distance(live, again) >= MIN_DISTANCE
    backdate(url, again.trial_id, timeout - 60)  # old, but not past the time-out: still live
    third = client.recommend(SPEC, PINS, mode="explore")
    assert min(scaled_distance(third, again), scaled_distance(third, live)) >= MIN_DISTANCE

    late = client.report_run(report(abandoned, 2.5, "late"))
    assert late.created and late.run.trial_id == abandoned.trial_id
    assert not client.report_run(report(abandoned, 2.5, "late")).created  # told once
    trials = study_of(url).trials
    assert trials[0].state is optuna.trial.TrialState.FAIL
    assert "no report within" in trials[0].user_attrs["timed_out"]
    assert [t.state.name for t in trials[1:4]] == ["RUNNING"] * 3
    own = trials[4]
    assert (own.state.name, own.value, own.user_attrs["run_id"]) == ("COMPLETE", 2.5, "late")
    assert own.user_attrs["reported_trial_id"] == abandoned.trial_id
    assert own.params["lr"] == abandoned.lr and len(trials) == 5


def test_trials_never_time_out_with_a_time_out_of_zero(tmp_path):
    with running_service(f"sqlite:///{tmp_path / 'svc.db'}", trial_timeout_seconds=0) as svc:
        with Client(f"127.0.0.1:{svc.port}", retries=0) as c:
            first = c.recommend(SPEC, PINS, mode="explore")
            backdate(svc.settings.database_url, first.trial_id, 10 * 365 * 86400)
            second = c.recommend(SPEC, PINS, mode="explore")
        assert scaled_distance(first, second) >= MIN_DISTANCE
        assert [t.state.name for t in study_of(svc.settings.database_url).trials] == ["RUNNING"] * 2


def test_predict_loss_knows_what_the_exploit_knows(client, service):
    trial = client.recommend(SPEC, PINS, mode="explore")
    point = trial.hyperparameters
    before = client.predict_loss(SPEC, [point])
    assert not before.model_versions[0].startswith("study-gp")  # a study, but nothing reported
    reported = before.predictions[0].loss * 1.03  # 3% worse than the model expects
    client.report_run(report(trial, reported, "a"))
    assert service.registry.wait_idle(60)  # the refit on the run has landed

    after = client.predict_loss(SPEC, [point])
    assert after.model_versions[0].startswith("study-gp@1:study=")
    assert "completed=1" in after.model_versions[0]
    moved = after.predictions[0].loss
    assert abs(moved - reported) < 0.1 * abs(before.predictions[0].loss - reported)
    interval = after.predictions[0].loss_interval
    assert interval.lo < reported < interval.hi

    best = client.recommend(SPEC, PINS)  # the exploit, conditioned on the same study
    at_best = client.predict_loss(SPEC, [best.hyperparameters]).predictions[0]
    assert at_best.loss == pytest.approx(best.predicted_loss, rel=1e-9)
    assert at_best.loss_interval.lo == pytest.approx(best.predicted_loss_interval.lo, rel=1e-9)
    assert at_best.loss_interval.hi == pytest.approx(best.predicted_loss_interval.hi, rel=1e-9)
    # A weight decay the pinned study never ran: the study's runs inform it less.
    other = client.predict_loss(SPEC, [point.model_copy(update={"weight_decay": 1.0})])
    assert abs(other.predictions[0].loss_interval.hi - other.predictions[0].loss_interval.lo) > \
        abs(interval.hi - interval.lo)


IMPORTED = """run_id,n_params,n_tokens,lr,batch_size_tokens,weight_decay,final_loss
imp-low,1e9,2e10,{low},{batch},0.1,2.61
imp-high,1e9,2e10,{high},{batch},0.1,2.58
imp-other-wd,1e9,2e10,{low},{batch},0.3,2.60
imp-other-spec,2e9,2e10,{low},{batch},0.1,2.40
"""


def test_runs_imported_after_a_study_exists_reach_it_once(client, service, tmp_path):
    url = service.settings.database_url
    trial = client.recommend(SPEC, PINS, mode="explore")  # the study exists from here on
    path = tmp_path / "runs.csv"
    path.write_text(IMPORTED.format(low=trial.lr / 2, high=trial.lr * 2, batch=trial.batch_size_tokens))
    store = RunStore(url)  # what `hparamrec import` does: straight into the database
    try:
        assert import_file(store, "default", path, "csv").added == 4
    finally:
        store.close()

    exploit = client.recommend(SPEC, PINS)  # reading the study catches it up
    assert "completed=2" in exploit.model_versions[0]
    told = [(t.user_attrs.get("run_id"), t.state.name, t.value) for t in study_of(url).trials]
    assert told == [(None, "RUNNING", None), ("imp-low", "COMPLETE", 2.61), ("imp-high", "COMPLETE", 2.58)]

    store = RunStore(url)  # importing again adds nothing, and nothing is told twice
    try:
        assert import_file(store, "default", path, "csv").added == 0
    finally:
        store.close()
    client.recommend(SPEC, PINS, mode="explore")
    client.recommend(SPEC, PINS)
    client.report_run(report(trial, 2.59, "reported"))  # the usual way still works alongside
    client.recommend(SPEC, PINS, mode="explore")
    runs = [t.user_attrs.get("run_id") for t in study_of(url).trials]
    assert runs[:3] == ["reported", "imp-low", "imp-high"] and runs[3:] == [None, None]
    predicted = client.predict_loss(SPEC, [trial.hyperparameters])
    assert "completed=3" in predicted.model_versions[0]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_conditioned_exploit_keeps_an_interval_around_its_values(client):
    pinned = ClientPins(batch_size_tokens=1e6)  # one free axis: the band cannot borrow width
    for k, loss in enumerate([2.43, 2.41, 2.42]):
        trial = client.recommend(SPEC, pinned, mode="explore")
        client.report_run(report(trial, loss, f"r{k}"))
    best = client.recommend(SPEC, pinned)
    assert any(s.name == "refine" for s in best.sources)
    assert best.lr_interval.lo <= best.lr <= best.lr_interval.hi
    assert best.lr_interval.hi > 1.1 * best.lr_interval.lo


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_study_caught_half_created_is_ignored_until_an_explore_completes_it(client, service):
    """Another replica creates a study, then sets its search space, under the study's lock;
    callers that do not take the lock may see it in between (or after that replica died)."""
    name = study_name("default", resolve_spec(n_params=1e9, n_tokens=2e10), Pins(weight_decay=0.1))
    optuna.create_study(study_name=name, storage=service.settings.database_url)  # no space yet
    rec = client.recommend(SPEC, PINS)
    assert not any(s.name == "refine" for s in rec.sources)
    client.report_run(RunReport(run_id="mine", spec=SPEC, hyperparameters=rec.hyperparameters,
                                outcome=RunOutcome.completed(2.6)))
    assert client.predict_loss(SPEC, [rec.hyperparameters]).predictions[0].loss > 0
    trial = client.recommend(SPEC, PINS, mode="explore")
    assert trial.trial_id
    study = study_of(service.settings.database_url)
    assert "space" in study.user_attrs
    assert [t.user_attrs.get("run_id") for t in study.trials] == ["mine", None]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_exploit_is_the_best_reported_configuration(client):
    """While the reports agree with the model (no noisy-reports warning; see the guarded rule)."""
    trials = [client.recommend(SPEC, PINS, mode="explore") for _ in range(3)]
    for k, (trial, eps) in enumerate(zip(trials, [0.0, -0.002, 0.0])):
        client.report_run(report(trial, trial.predicted_loss * (1 + eps), f"t{k}"))
    best = client.recommend(SPEC, PINS)
    assert (best.lr, best.batch_size_tokens) == pytest.approx((trials[1].lr, trials[1].batch_size_tokens))
    # and says so: its sources called it the argmin of the conditioned model
    lr_source = next(s for s in best.sources if s.field == "lr")
    assert lr_source.name == "refine"
    assert lr_source.detail.startswith("the completed run with the lowest reported loss")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("noise", [(0.0, 0.0, 0.0, 0.0), (0.02, -0.02, 0.025, -0.015)])
def test_losses_that_disagree_with_the_model_beyond_its_uncertainty_get_a_warning(client, noise):
    """Losses at the model's own predictions pass; ones scattered by ~2% (one step's batch
    noise, not run-to-run noise) are flagged on the exploit recommendation."""
    for k, eps in enumerate(noise):
        trial = client.recommend(SPEC, PINS, mode="explore")
        client.report_run(report(trial, trial.predicted_loss * (1 + eps), f"run-{k}"))
    warnings = [w for w in client.recommend(SPEC, PINS).warnings if "reported losses" in w]
    if any(noise):
        assert len(warnings) == 1 and "4 reported losses" in warnings[0]
    else:
        assert warnings == []


def test_a_loss_level_unlike_the_models_is_not_taken_for_noisy_reports(tmp_path):
    """Clean reports 30% above the level the model learned from the stored sweep (another
    dataset or tokenizer), on the sweep's own bowl: no warning, and the exploit is the best
    reported run. A check that did not profile the level out flagged them from the third
    report on, and the guarded rule then ignored them."""
    url = f"sqlite:///{tmp_path / 'level.db'}"
    store = RunStore(url)
    store.add_many("default", synthetic_sweep())
    store.close()
    n, d = 4e8, 2e10  # between the stored sizes
    lr_star, batch_star = true_optimum(n, d)

    def loss(rec) -> float:
        u, v = math.log(rec.lr / lr_star), math.log(rec.batch_size_tokens / batch_star)
        return 1.3 * sweep_loss(n, d, u, v)

    spec = TrainingSpec(n_params=n, n_tokens=d)
    # Any learned model's level will do (the default, auto, took ~4 s a refit, five times).
    with running_service(url, refit_debounce_seconds=0.1, predictor="surface") as svc, \
            Client(f"127.0.0.1:{svc.port}", retries=0) as client:
        assert svc.registry.wait_idle(timeout=120)
        for k in range(4):
            trial = client.recommend(spec, PINS, mode="explore")
            client.report_run(RunReport(run_id=f"run-{k}", spec=spec, trial_id=trial.trial_id,
                                        hyperparameters=trial.hyperparameters,
                                        outcome=RunOutcome.completed(loss(trial))))
            assert svc.registry.wait_idle(timeout=120)
            exploit = client.recommend(spec, PINS)
            assert not [w for w in exploit.warnings if "reported losses" in w]
            assert any(s.name == "refine" for s in exploit.sources)
            assert not any("too noisy" in s.detail for s in exploit.sources)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("noise", [(0.0, 0.0, 0.0, -0.001), (0.02, -0.02, 0.025, -0.015)])
def test_the_guarded_rule_keeps_the_zero_shot_recommendation_once_reports_look_noisy(
        client, service, noise):
    """`guarded` (not the default) answers as best_run while the reports pass the noisy-reports
    check, and with the model's own recommendation once they fail it."""
    for k, eps in enumerate(noise):
        trial = client.recommend(SPEC, PINS, mode="explore")
        client.report_run(report(trial, trial.predicted_loss * (1 + eps), f"run-{k}"))
    spec, pins = resolve_spec(n_params=1e9, n_tokens=2e10), Pins(weight_decay=0.1)
    assert service.registry.wait_idle(timeout=60)  # the refit on the reported runs has landed
    zero_shot = service.registry.get("default").recommender.recommend(spec, pins)
    guarded = service.refiner.exploit("default", spec, pins, rule="guarded")
    best_run = service.refiner.exploit("default", spec, pins, rule="best_run")
    assert (best_run.lr, best_run.batch_size_tokens) != (zero_shot.lr, zero_shot.batch_size_tokens)
    if any(abs(e) > 0.01 for e in noise):
        assert (guarded.lr, guarded.batch_size_tokens) == (zero_shot.lr, zero_shot.batch_size_tokens)
        assert any("too noisy" in s.detail for s in guarded.sources)
        assert any("reported losses" in w for w in guarded.warnings)
    else:
        assert (guarded.lr, guarded.batch_size_tokens) == (best_run.lr, best_run.batch_size_tokens)
        assert not guarded.warnings


def test_the_best_run_above_the_exploits_lr_limit_has_a_finite_predicted_loss(client):
    """A completed run is evidence whatever the lr limit says (here a diverged run at a lower
    lr, as chance divergence near the edge gives): the exploit picked the best run above the
    limit with an infinite predicted loss and interval (and `plot --study` failed on it)."""
    spec = {"n_params": 4e9, "n_tokens": 8e10}
    zero = client.recommend(spec)
    runs = ((1.0, {"status": "completed", "final_loss": 2.35}),
            (1.9, {"status": "diverged"}),
            (2.0, {"status": "completed", "final_loss": 2.30}))
    for factor, outcome in runs:
        client.report_run(run_id=f"own-{factor}", spec=spec, outcome=outcome,
                          hyperparameters={"lr": zero.lr * factor, "weight_decay": zero.weight_decay,
                                           "batch_size_tokens": zero.batch_size_tokens})
    client.recommend(spec, mode="explore")  # the study starts with the stored runs
    best = client.recommend(spec)
    assert best.lr == pytest.approx(2 * zero.lr)  # the best run
    assert math.isfinite(best.predicted_loss) and best.predicted_loss == pytest.approx(2.30, rel=0.01)
    interval = best.predicted_loss_interval
    assert math.isfinite(interval.hi) and interval.lo < best.predicted_loss < interval.hi


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_stored_run_resent_with_another_trial_says_it_did_not_close_that_trial(client):
    """It came back as merely already stored, and the launcher took its trial for closed."""
    first = client.recommend(SPEC, PINS, mode="explore")
    second = client.recommend(SPEC, PINS, mode="explore")
    client.report_run(report(first, 2.5, "ex-1"))
    resent = client.report_run(report(first, 2.5, "ex-1", trial_id=second.trial_id))
    assert not resent.created and resent.differing_fields == []
    assert resent.warnings == [f"run 'ex-1' was stored before against trial {first.trial_id}: this "
                               f"report did not close trial {second.trial_id}; report that "
                               "trial's run under its own run_id"]
    assert client.heartbeat(second.trial_id).state.name == "RUNNING"
    assert client.report_run(report(first, 2.5, "ex-1")).warnings == []  # a plain retry
