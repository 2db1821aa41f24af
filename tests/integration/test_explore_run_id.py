"""An explore for a named run (RecommendRequest.run_id) hands out one trial per run: asking again
for the run (a retry, another process of its job, the job restarted) returns its trial while it
runs; a run already stored is refused. Real server, SQLite and PostgreSQL."""

import asyncio

import pytest

from clients import AsyncClient
from clients.errors import InvalidArgumentError
from clients.integrations import tracked_run
from tests.integration.test_refine import (PINS, SPEC, backdate, explore_concurrently,
                                          explore_on_two_replicas, report, study_of)

pytestmark = pytest.mark.integration


def test_asking_again_for_a_run_returns_its_trial_while_it_runs(client, service):
    first = client.recommend(SPEC, PINS, mode="explore", run_id="job-7")
    again = client.recommend(SPEC, PINS, mode="explore", run_id="job-7")
    assert again.trial_id == first.trial_id
    assert again.hyperparameters == first.hyperparameters
    assert any("handed out before for run 'job-7'" in s.detail for s in again.sources)
    other = client.recommend(SPEC, PINS, mode="explore", run_id="job-8")
    unnamed = client.recommend(SPEC, PINS, mode="explore")
    assert len({first.trial_id, other.trial_id, unnamed.trial_id}) == 3
    trials = study_of(service.settings.database_url).trials
    assert len(trials) == 3 and [t.user_attrs.get("for_run_id") for t in trials] == [
        "job-7", "job-8", None]

    client.report_run(report(first, 2.5, "job-7"))
    with pytest.raises(InvalidArgumentError) as refused:  # its report could not close a new one
        client.recommend(SPEC, PINS, mode="explore", run_id="job-7")
    assert refused.value.field_violations[0][0] == "run_id"
    assert "already stored (completed, trial " + first.trial_id in str(refused.value)
    assert len(study_of(service.settings.database_url).trials) == 3  # nothing handed out
    # Exploit ignores run_id.
    assert not client.recommend(SPEC, PINS, run_id="job-7").trial_id


def test_a_trial_given_up_is_handed_back_to_its_run_with_a_warning(client, service):
    """A preempted job that waited in the queue past its trial's time-out resumes a checkpoint
    trained with the trial's values: it is handed those again, and told."""
    url, timeout = service.settings.database_url, service.settings.trial_timeout_seconds
    lost = client.recommend(SPEC, PINS, mode="explore", run_id="slow-job")
    backdate(url, lost.trial_id, timeout + 60)
    client.recommend(SPEC, PINS, mode="explore")  # another launcher's explore gives it up
    back = client.recommend(SPEC, PINS, mode="explore", run_id="slow-job")
    assert (back.trial_id, back.hyperparameters) == (lost.trial_id, lost.hyperparameters)
    assert any(f"trial {lost.trial_id} was given up by the time-out" in w for w in back.warnings)
    assert client.heartbeat(back.trial_id).state.value == "timed_out"
    assert [t.state.name for t in study_of(url).trials] == ["FAIL", "RUNNING"]
    client.report_run(report(back, 2.5, "slow-job"))  # joins as a configuration of its own
    own = study_of(url).trials[-1]
    assert (own.state.name, own.user_attrs["run_id"], own.params["lr"]) == ("COMPLETE", "slow-job", lost.lr)


def test_a_trial_closed_by_another_run_is_not_handed_back(client, service):
    first = client.recommend(SPEC, PINS, mode="explore", run_id="job-a")
    client.report_run(report(first, 2.5, "someone-else"))  # another run closed the trial
    again = client.recommend(SPEC, PINS, mode="explore", run_id="job-a")
    assert again.trial_id != first.trial_id and not again.warnings


def test_asking_again_counts_as_a_sign_of_life(client, service):
    url, timeout = service.settings.database_url, service.settings.trial_timeout_seconds
    first = client.recommend(SPEC, PINS, mode="explore", run_id="restarted")
    backdate(url, first.trial_id, timeout - 60)  # about to time out, when the job restarts
    client.recommend(SPEC, PINS, mode="explore", run_id="restarted")
    assert "last_heartbeat" in study_of(url).trials[0].user_attrs
    backdate(url, first.trial_id, 120)  # its start is past the time-out now; its restart is not
    assert client.recommend(SPEC, PINS, mode="explore", run_id="restarted").trial_id == first.trial_id


def test_concurrent_asks_for_one_run_get_one_trial(target, service):
    results = explore_concurrently(target, 4, run_id="one-job")
    assert len({r.trial_id for r in results}) == 1
    assert len(study_of(service.settings.database_url).trials) == 1


@pytest.mark.parametrize("run_id", ["x" * 201, "tab\there"])
def test_a_bad_run_id_is_refused_on_its_field(client, run_id):
    with pytest.raises(InvalidArgumentError) as refused:
        client.recommend(SPEC, PINS, mode="explore", run_id=run_id)
    assert refused.value.field_violations[0][0] == "run_id"


def test_a_restarted_tracked_run_gets_its_trial_back(target, service):
    """A job restarted under the same run_id (e.g. after preemption, resuming its checkpoint)
    trains the trial it started with, not a new one."""
    with pytest.raises(SystemExit):
        with tracked_run(SPEC, server=target, pins=PINS, mode="explore", run_id="preempted") as run:
            trial, hp = run.trial_id, run.hyperparameters
            run.log(2.6, step=1)
            raise SystemExit(143)  # a preemption's SIGTERM: not reported, the trial stays
    with tracked_run(SPEC, server=target, pins=PINS, mode="explore", run_id="preempted") as run:
        assert (run.trial_id, run.hyperparameters) == (trial, hp)
        run.log(2.5, step=2)
    trials = study_of(service.settings.database_url).trials
    assert [(t.state.name, t.user_attrs.get("run_id")) for t in trials] == [("COMPLETE", "preempted")]


def test_the_async_client_names_the_run_too(target):
    async def twice():
        async with AsyncClient(target, retries=0) as client:
            return [await client.recommend(SPEC, PINS, mode="explore", run_id="async-job")
                    for _ in range(2)]

    first, again = asyncio.run(twice())
    assert first.trial_id and again.trial_id == first.trial_id


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_replicas_on_postgresql_hand_one_run_one_trial(database_url):
    """Two replicas on one PostgreSQL, each asked twice at once for one run: the advisory lock
    makes the first ask's trial the one every other ask finds."""
    results = explore_on_two_replicas(database_url, run_id="one-job")
    assert len({r.trial_id for r in results}) == 1
