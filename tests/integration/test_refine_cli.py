"""`hparamrec recommend --mode explore` and `hparamrec report --trial-id` against a real server."""

import json

import pytest

from tests.integration.test_cli import cli

pytestmark = pytest.mark.integration
SPEC = ["--params", "1B", "--tokens", "20B", "--weight-decay", "0.1"]


@pytest.fixture
def database_url(tmp_path):
    return f"sqlite:///{tmp_path / 'svc.db'}"


def test_explore_prints_the_trial_and_report_closes_it(target):
    out = cli("recommend", *SPEC, "--mode", "explore", "--json", server=target)
    assert out.returncode == 0, out.stderr
    trial = json.loads(out.stdout)
    assert trial["trial_id"]
    report = cli("report", "--params", "1B", "--tokens", "20B", "--lr", repr(trial["lr"]),
                 "--batch-size-tokens", repr(trial["batch_size_tokens"]), "--weight-decay", "0.1",
                 "--loss", "2.5", "--trial-id", trial["trial_id"], "--json", server=target)
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["run"]["trial_id"] == trial["trial_id"]
    assert json.loads(report.stdout)["warnings"] == [] and report.stderr == ""

    human = cli("recommend", *SPEC, "--mode", "explore", server=target)
    assert human.returncode == 0, human.stderr
    assert "--trial-id" in human.stdout and "trial " in human.stdout
    exploit = json.loads(cli("recommend", *SPEC, "--json", server=target).stdout)
    assert exploit["trial_id"] == "" and exploit["model_versions"][0].startswith("study-gp")


def test_report_against_an_unknown_trial_is_bad_input(target):
    out = cli("report", "--params", "1B", "--tokens", "20B", "--lr", "1e-3", "--batch-size-tokens",
              "1M", "--weight-decay", "0.1", "--loss", "2.5", "--trial-id", "77-3", server=target)
    assert out.returncode == 2 and "trial_id" in out.stderr


def test_explore_for_a_named_run_hands_its_trial_out_again(target):
    first, again = (json.loads(cli("recommend", *SPEC, "--mode", "explore", "--run-id", "job 9",
                                   "--json", server=target).stdout) for _ in range(2))
    assert first["trial_id"] and again["trial_id"] == first["trial_id"]
    human = cli("recommend", *SPEC, "--mode", "explore", "--run-id", "job 9", server=target)
    assert f"--trial-id {first['trial_id']} --run-id 'job 9' ..." in human.stdout
    report = cli("report", "--params", "1B", "--tokens", "20B", "--lr", repr(first["lr"]),
                 "--batch-size-tokens", repr(first["batch_size_tokens"]), "--weight-decay", "0.1",
                 "--loss", "2.5", "--trial-id", first["trial_id"], "--run-id", "job 9",
                 server=target)
    assert report.returncode == 0, report.stderr
    refused = cli("recommend", *SPEC, "--mode", "explore", "--run-id", "job 9", server=target)
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "run_id" in refused.stderr
    first, again = (json.loads(cli("recommend", *SPEC, "--run-id", "job 10", "--json",
                                   server=target).stdout) for _ in range(2))
    assert first == again and first["trial_id"] == ""  # exploit: the same recommendation


def report_against(target, trial: dict, run_id: str, lr: float):
    return cli("report", "--params", "1B", "--tokens", "20B", "--lr", repr(lr),
               "--batch-size-tokens", repr(trial["batch_size_tokens"]), "--weight-decay", "0.1",
               "--loss", "2.5", "--trial-id", trial["trial_id"], "--run-id", run_id, server=target)


def test_a_report_the_trial_cannot_take_is_stored_with_a_warning_saying_why(target):
    """A second run against a trial another run closed, and a run with other values than its
    trial's, are stored and join the study as configurations of their own: the reporter is
    told, instead of believing the run closed its trial."""
    trial = json.loads(cli("recommend", *SPEC, "--mode", "explore", "--json", server=target).stdout)
    first = report_against(target, trial, "first", trial["lr"])
    assert first.returncode == 0 and first.stderr == ""
    second = report_against(target, trial, "second", trial["lr"])
    assert second.returncode == 0 and "run second stored" in second.stdout
    assert second.stderr.splitlines() == [
        f"warning: trial {trial['trial_id']} did not take run 'second': the trial was closed by "
        "run 'first' (complete); the run joins the study as a configuration of its own"]

    other = json.loads(cli("recommend", *SPEC, "--mode", "explore", "--json", server=target).stdout)
    moved = report_against(target, other, "moved", other["lr"] * 2)
    assert moved.returncode == 0
    assert moved.stderr.startswith(f"warning: trial {other['trial_id']} did not take run 'moved': "
                                   "the run's spec or values are not the ones the trial handed out")
