"""`hparamrec plot --study` against a real server: the history of a study explored and reported
through the CLI; and explore trials through `runs export` and `import`."""

import json

import pytest

from tests.integration.test_cli import cli

pytestmark = pytest.mark.integration
SPEC = ["--params", "1B", "--tokens", "20B"]
PINS = ["--weight-decay", "0.1"]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def database_url(tmp_path):
    return f"sqlite:///{tmp_path / 'svc.db'}"


def explore(target) -> dict:
    out = cli("recommend", *SPEC, *PINS, "--mode", "explore", "--json", server=target)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def report(target, run_id, lr, batch, *outcome, trial_id="", weight_decay="0.1", spec=SPEC):
    out = cli("report", *spec, "--lr", repr(lr), "--batch-size-tokens", repr(batch),
              "--weight-decay", weight_decay, *outcome, "--run-id", run_id,
              "--trial-id", trial_id, server=target)
    assert out.returncode == 0, out.stderr


def plot_study(target, path, *args):
    out = cli("plot", "--study", *SPEC, *args, "--out", str(path), "--json", server=target)
    assert out.returncode == 0, out.stderr
    assert path.read_bytes()[:8] == PNG and path.stat().st_size > 20_000
    return json.loads(out.stdout)


def test_plot_study_shows_the_trials_and_own_runs_of_the_study(target, tmp_path):
    first = explore(target)
    report(target, "t1", first["lr"], first["batch_size_tokens"], "--loss", "2.52",
           trial_id=first["trial_id"])
    second = explore(target)
    assert second["trial_id"] != first["trial_id"]
    report(target, "t2", second["lr"], second["batch_size_tokens"], "--diverged",
           trial_id=second["trial_id"])
    report(target, "own", 1.5e-3, 1048576, "--loss", "2.47")
    report(target, "own-wd-0.3", 1.5e-3, 1048576, "--loss", "2.40", weight_decay="0.3")
    report(target, "other-spec", 1e-3, 1048576, "--loss", "2.0", spec=["--params", "7B",
                                                                      "--tokens", "1T"])

    summary = plot_study(target, tmp_path / "pinned.png", *PINS)  # the study of weight decay 0.1
    counts = tuple(summary[k] for k in ("runs", "trials", "diverged", "failed"))
    assert counts == (3, 2, 1, 0)
    assert summary["best"]["run_id"] == "own" and summary["best"]["outcome"]["final_loss"] == 2.47
    rec = summary["recommendation"]
    assert rec["spec"]["n_params"] == 1e9 and rec["weight_decay"] == 0.1
    assert rec["model_versions"][0].startswith("study-gp")  # conditioned on the study's trials

    summary = plot_study(target, tmp_path / "free.png")  # no pins: every run of the spec
    assert (summary["runs"], summary["trials"], summary["best"]["run_id"]) == (4, 2, "own-wd-0.3")

    human = cli("plot", "--study", *SPEC, *PINS, "--out", str(tmp_path / "h.png"), server=target)
    assert human.returncode == 0, human.stderr
    assert human.stdout.startswith(f"wrote {tmp_path / 'h.png'}: 3 runs of the study (2 explore "
                                   "trials, 1 diverged), best loss 2.470 (run own); the exploit "
                                   "recommendation predicts ")


def test_plot_study_of_a_spec_without_runs_is_one_line_not_found(target, tmp_path):
    report(target, "own", 1.5e-3, 1048576, "--loss", "2.47")
    path = tmp_path / "none.png"
    out = cli("plot", "--study", "--params", "7B", "--tokens", "1T", "--out", str(path),
              server=target)
    assert out.returncode == 4 and out.stdout == "" and not path.exists()
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no stored runs of 7B params, 1T tokens")
    pinned = cli("plot", "--study", *SPEC, "--batch-size-tokens", "4M", "--out", str(path),
                 server=target)  # runs of the spec, none at that batch
    assert pinned.returncode == 4 and "with batch 4M" in pinned.stderr


def test_exported_trials_import_as_labels_and_still_plot_as_trials(target, tmp_path):
    from tests.integration.in_process_server import QUICK_REFITS, running_service

    trial = explore(target)
    report(target, "t1", trial["lr"], trial["batch_size_tokens"], "--loss", "2.52",
           trial_id=trial["trial_id"])
    report(target, "own", 1.5e-3, 1048576, "--loss", "2.47")
    exported = tmp_path / "runs.jsonl"
    out = cli("runs", "export", "--out", str(exported), server=target)
    assert out.returncode == 0, out.stderr
    assert [json.loads(line).get("trial_id") for line in exported.read_text().splitlines()] == [
        trial["trial_id"], None]

    url = f"sqlite:///{tmp_path / 'copy.db'}"
    imported = cli("import", "--db", url, "--format", "jsonl", "--json", str(exported))
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["added"] == 2
    with running_service(url, grace=0, refit_debounce_seconds=QUICK_REFITS) as svc:
        copy = f"127.0.0.1:{svc.port}"
        t1 = json.loads(cli("runs", "show", "t1", "--json", server=copy).stdout)
        path = tmp_path / "copy.png"
        out = cli("plot", "--study", *SPEC, *PINS, "--out", str(path), "--json", server=copy)
    # The copy has no such trial: the id is a label, not a claim on one of the copy's trials.
    assert t1["trial_id"] == "" and t1["metadata"] == {"imported_trial_id": trial["trial_id"]}
    assert out.returncode == 0, out.stderr
    assert (json.loads(out.stdout)["runs"], json.loads(out.stdout)["trials"]) == (2, 1)
