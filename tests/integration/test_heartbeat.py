"""Heartbeat through a real server: a trial whose run keeps sending them is not closed by the
time-out; one whose heartbeats stopped is; finished, unknown and other tenants' trials."""

import asyncio
import os
import time
from datetime import UTC, datetime, timedelta

import optuna
import pytest

from clients import AsyncClient, TrialState
from clients.client import Client
from clients.errors import InvalidArgumentError, UnauthenticatedError
from predictor.study import _storage_url
from tests.integration.in_process_server import running_service
from tests.integration.test_auth import keys, db_url  # noqa: F401  (fixtures)
from tests.integration.test_refine import PINS, SPEC, backdate, report, study_of

pytestmark = pytest.mark.integration


@pytest.fixture
def local_time_zone():
    """The process (and so the in-process server) in a time zone that is not UTC: Optuna's
    datetime_start is the naive local clock, heartbeats are stamped in UTC, and comparing the
    two wrongly would be off by hours."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Kolkata"  # UTC+5:30
    time.tzset()
    yield
    if before is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = before
    time.tzset()


def set_heartbeat(url: str, trial_id: str, when: datetime) -> None:
    """Moves a trial's last heartbeat to `when`, as if its run had gone quiet then."""
    study_id, number = (int(x) for x in trial_id.split("-"))
    storage = optuna.storages.RDBStorage(_storage_url(url))
    try:
        trial = storage.get_trial_id_from_study_id_trial_number(study_id, number)
        storage.set_trial_user_attr(trial, "last_heartbeat", when.isoformat())
    finally:
        storage.engine.dispose()


def states(url: str) -> list[str]:
    return [t.state.name for t in study_of(url).trials]


def test_heartbeats_keep_a_trial_alive_past_the_time_out(client, service, local_time_zone):
    url, timeout = service.settings.database_url, service.settings.trial_timeout_seconds
    kept = client.recommend(SPEC, PINS, mode="explore")
    quiet = client.recommend(SPEC, PINS, mode="explore")
    for trial in (kept, quiet):
        # Both handed out longer ago than the time-out. Read as UTC, the naive local start
        # would look 5.5 h younger, and the quiet trial would not be closed below.
        backdate(url, trial.trial_id, timeout + 60)
    before = datetime.now(UTC)
    beat = client.heartbeat(kept.trial_id)
    assert beat.running and beat.state is TrialState.RUNNING and not beat.run_id
    second = timedelta(seconds=1)
    assert before - second <= beat.heartbeat_at <= datetime.now(UTC) + second
    assert beat.expires_at - beat.heartbeat_at == timedelta(seconds=timeout)

    client.recommend(SPEC, PINS, mode="explore")  # expires what has said nothing for too long
    assert states(url) == ["RUNNING", "FAIL", "RUNNING"]
    kept_trial, quiet_trial = study_of(url).trials[:2]
    assert "last_heartbeat" in kept_trial.user_attrs and "timed_out" not in kept_trial.user_attrs
    assert "no report within" in quiet_trial.user_attrs["timed_out"]

    # Heartbeats stopped an hour short of the time-out: still alive.
    set_heartbeat(url, kept.trial_id, datetime.now(UTC) - timedelta(seconds=timeout - 3600))
    client.recommend(SPEC, PINS, mode="explore")
    assert states(url)[0] == "RUNNING"
    # ... and past it: closed by the next explore, and a heartbeat now says so.
    set_heartbeat(url, kept.trial_id, datetime.now(UTC) - timedelta(seconds=timeout + 60))
    client.recommend(SPEC, PINS, mode="explore")
    assert states(url)[0] == "FAIL"
    late = client.heartbeat(kept.trial_id)
    assert late.state is TrialState.TIMED_OUT and not late.running
    assert "no report within" in late.detail
    assert late.heartbeat_at is None and late.expires_at is None
    assert states(url)[0] == "FAIL"  # not revived
    # Its report still counts, as the run's own configuration.
    assert client.report_run(report(kept, 2.5, "kept")).run.trial_id == kept.trial_id


def serving(tmp_path, trial_timeout_seconds: float):
    """A server on SQLite without auth, with this trial time-out."""
    return running_service(f"sqlite:///{tmp_path / 'svc.db'}",
                           trial_timeout_seconds=trial_timeout_seconds)


def test_heartbeats_in_real_time_with_a_tiny_time_out(tmp_path):
    with serving(tmp_path, 1.5) as svc:
        with Client(f"127.0.0.1:{svc.port}", retries=0) as c:
            kept = c.recommend(SPEC, PINS, mode="explore")
            c.recommend(SPEC, PINS, mode="explore")
            deadline = time.monotonic() + 2.5
            while time.monotonic() < deadline:
                assert c.heartbeat(kept.trial_id).running
                time.sleep(0.3)
            c.recommend(SPEC, PINS, mode="explore")
            assert states(svc.settings.database_url) == ["RUNNING", "FAIL", "RUNNING"]
            time.sleep(2)
            c.recommend(SPEC, PINS, mode="explore")
            assert states(svc.settings.database_url) == ["FAIL", "FAIL", "FAIL", "RUNNING"]
            assert c.heartbeat(kept.trial_id).state is TrialState.TIMED_OUT


def test_a_heartbeat_of_a_trial_without_a_time_out_has_no_expiry(tmp_path):
    with serving(tmp_path, 0) as svc:
        with Client(f"127.0.0.1:{svc.port}", retries=0) as c:
            beat = c.heartbeat(c.recommend(SPEC, PINS, mode="explore").trial_id)
        assert beat.running and beat.heartbeat_at is not None and beat.expires_at is None
        assert "never time out" in beat.detail


def test_a_trial_whose_launcher_said_its_interval_is_freed_after_three_missed_heartbeats(
        client, service):
    """Long before the server's time-out (a week): a launcher that said it beats every 10
    minutes and went quiet for 40 has most likely died; one that said nothing is kept."""
    url = service.settings.database_url
    said = client.recommend(SPEC, PINS, mode="explore")
    unsaid = client.recommend(SPEC, PINS, mode="explore")
    beat = client.heartbeat(said.trial_id, interval_seconds=600)
    assert beat.expires_at - beat.heartbeat_at == timedelta(seconds=1800)
    plain = client.heartbeat(unsaid.trial_id)
    assert plain.expires_at - plain.heartbeat_at == timedelta(
        seconds=service.settings.trial_timeout_seconds)
    now = datetime.now(UTC)
    for trial in (said, unsaid):  # quiet for two intervals: both kept
        set_heartbeat(url, trial.trial_id, now - timedelta(seconds=1200))
    client.recommend(SPEC, PINS, mode="explore")
    assert states(url) == ["RUNNING", "RUNNING", "RUNNING"]
    for trial in (said, unsaid):  # quiet for four
        set_heartbeat(url, trial.trial_id, now - timedelta(seconds=2400))
    client.recommend(SPEC, PINS, mode="explore")
    assert states(url) == ["FAIL", "RUNNING", "RUNNING", "RUNNING"]
    why = study_of(url).trials[0].user_attrs["timed_out"]
    assert "3 heartbeat intervals (3 x 600 s" in why
    assert client.heartbeat(said.trial_id).state is TrialState.TIMED_OUT
    # An interval too long to matter (3 of them past the time-out) leaves the time-out alone.
    huge = client.heartbeat(unsaid.trial_id, interval_seconds=1e300)
    assert huge.expires_at - huge.heartbeat_at == timedelta(
        seconds=service.settings.trial_timeout_seconds)
    client.recommend(SPEC, PINS, mode="explore")
    assert states(url)[1] == "RUNNING"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_heartbeat_interval_must_be_a_finite_number_of_seconds(client, service):
    trial = client.recommend(SPEC, PINS, mode="explore")
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(InvalidArgumentError) as error:
            client.heartbeat(trial.trial_id, interval_seconds=bad)
        assert [f for f, _ in error.value.field_violations] == ["interval_seconds"]
    assert "last_heartbeat" not in study_of(service.settings.database_url).trials[0].user_attrs


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_heartbeat_of_a_finished_trial_says_how_it_ended(client, service):
    url = service.settings.database_url
    done = client.recommend(SPEC, PINS, mode="explore")
    client.report_run(report(done, 2.5, "done"))
    answer = client.heartbeat(done.trial_id)
    assert (answer.state, answer.run_id) == (TrialState.REPORTED, "done")
    assert not answer.running and answer.heartbeat_at is None and "'done'" in answer.detail

    changed = client.recommend(SPEC, PINS, mode="explore")
    other = changed.hyperparameters.model_copy(update={"lr": changed.lr * 3})
    client.report_run(report(changed, 2.6, "changed").model_copy(update={"hyperparameters": other}))
    answer = client.heartbeat(changed.trial_id)
    assert (answer.state, answer.run_id) == (TrialState.SUPERSEDED, "changed")

    diverged = client.recommend(SPEC, PINS, mode="explore")
    client.report_run(report(diverged, run_id="boom", status="diverged"))
    assert client.heartbeat(diverged.trial_id).state is TrialState.REPORTED
    # Nothing recorded on finished trials.
    assert not any("last_heartbeat" in t.user_attrs for t in study_of(url).trials)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_unknown_trial_ids_are_invalid_arguments_naming_the_field(client):
    client.recommend(SPEC, PINS, mode="explore")
    for bad in ("999-0", "1-99", "garbage", "01-0", ""):
        with pytest.raises(InvalidArgumentError) as error:
            client.heartbeat(bad)
        assert [f for f, _ in error.value.field_violations] == ["trial_id"]


def test_another_tenants_trial_is_unknown_and_keys_are_required(db_url, keys):  # noqa: F811
    with running_service(db_url, auth_disabled=False) as svc:
        target = f"127.0.0.1:{svc.port}"
        with Client(target, api_key=keys["alice"], retries=0) as alice, \
                Client(target, api_key=keys["bob"], retries=0) as bob, \
                Client(target, retries=0) as anonymous:
            trial = alice.recommend(SPEC, PINS, mode="explore")
            with pytest.raises(InvalidArgumentError, match="trial_id"):
                bob.heartbeat(trial.trial_id)
            with pytest.raises(UnauthenticatedError):
                anonymous.heartbeat(trial.trial_id)
            assert alice.heartbeat(trial.trial_id).running
        trials = study_of(db_url, "alice").trials
        assert len(trials) == 1 and "last_heartbeat" in trials[0].user_attrs


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_heartbeat_is_cheap_no_sync_no_refit_no_cache_flush(client, service, monkeypatch):
    trial = client.recommend(SPEC, PINS, mode="explore")
    client.recommend(SPEC, PINS)  # cached

    def forbidden(*args, **kwargs):
        raise AssertionError("a heartbeat must not sync, refit or flush the cache")

    monkeypatch.setattr(service.refiner.sync, "sync", forbidden)
    monkeypatch.setattr(service.registry, "schedule_refit", forbidden)
    monkeypatch.setattr(service.engine.cache, "invalidate", forbidden)
    assert client.heartbeat(trial.trial_id).running


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_async_client_sends_heartbeats(target, client):
    trial = client.recommend(SPEC, PINS, mode="explore")

    async def beat():
        async with AsyncClient(target, retries=0) as c:
            return await c.heartbeat(trial.trial_id)

    assert asyncio.run(beat()).running


def test_a_trial_whose_explore_call_ended_before_the_answer_is_given_back(tmp_path, caplog):
    """A burst of explores of one study queue for its lock; one whose caller's deadline
    passed meanwhile still made its trial, which nobody would run or report: it stayed
    running for the time-out (a week), repelling suggestions."""
    from clients.errors import DeadlineExceededError
    from benchmark_db.records import Pins, resolve_spec
    from predictor.study import study_name

    url = f"sqlite:///{tmp_path / 'b.db'}"
    name = study_name("default", resolve_spec(n_params=1e9, n_tokens=2e10), Pins(weight_decay=0.1))
    with running_service(url) as svc, Client(f"127.0.0.1:{svc.port}", retries=0) as client:
        client.recommend({"n_params": 1e8, "n_tokens": 2e9}, mode="explore")  # Optuna's tables
        with svc.engine.refiner.studies.lock(name):  # the burst ahead of it
            with pytest.raises(DeadlineExceededError):
                client.recommend(SPEC, PINS, mode="explore", timeout=0.5)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if states(url) == ["FAIL"]:
                    break
            except KeyError:  # the handler has not made the study yet
                pass
            time.sleep(0.05)
        assert states(url) == ["FAIL"]
        assert "ended before the answer" in study_of(url).trials[0].user_attrs["timed_out"]
        assert client.recommend(SPEC, PINS, mode="explore").trial_id  # the next is handed out
    assert "Recommend DEADLINE_EXCEEDED in" in caplog.text
    assert "after the caller had gone" in caplog.text
