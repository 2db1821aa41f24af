"""The installed `hparamrec` console script against a real server."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
HPARAMREC = str(Path(sys.executable).parent / "hparamrec")


def cli(*args, server=None):
    argv = [HPARAMREC, *args] + (["--server", server] if server else [])
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


REPORT = ["report", "--params", "1.3B", "--tokens", "100B", "--lr", "1.2e-3",
          "--batch-size-tokens", "1M", "--weight-decay", "0.1", "--loss", "2.41",
          "--run-id", "my-run-7"]


def test_recommend_json_prints_recommendation_fields(target):
    out = cli("recommend", "--params", "1.3B", "--tokens", "100B", "--bits", "4", "--json",
              server=target)
    assert out.returncode == 0, out.stderr
    rec = json.loads(out.stdout)
    for key in ("lr", "lr_interval", "batch_size_tokens", "batch_size_sequences", "weight_decay",
                "qat_fraction", "predicted_loss", "predicted_loss_interval", "sources",
                "warnings", "recommendation_id"):
        assert key in rec
    assert 0 < rec["qat_fraction"] < 1
    assert rec["spec"]["n_params"] == 1.3e9 and rec["spec"]["weight_bits"] == 4


def test_recommend_with_pinned_batch(target):
    out = cli("recommend", "--params", "1.3B", "--tokens", "100B", "--batch-size-tokens", "1M",
              "--json", server=target)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["batch_size_tokens"] == 1e6


def test_recommend_table(target):
    out = cli("recommend", "--params", "1B", "--tokens", "20B", server=target)
    assert out.returncode == 0, out.stderr
    assert "learning rate" in out.stdout and "steplaw_lr" in out.stdout


def test_report_then_list(target):
    first = cli(*REPORT, "--json", server=target)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["created"] is True
    again = cli(*REPORT, server=target)
    assert again.returncode == 0 and "already stored" in again.stdout
    listed = cli("runs", "list", "--json", server=target)
    runs = json.loads(listed.stdout)["runs"]
    assert [r["run_id"] for r in runs] == ["my-run-7"]
    assert runs[0]["hyperparameters"]["batch_size_tokens"] == 1e6
    shown = cli("runs", "show", "my-run-7", "--json", server=target)
    assert json.loads(shown.stdout)["outcome"]["final_loss"] == 2.41


def test_runs_list_limit(target):
    for i in range(3):
        assert cli(*REPORT[:-1], f"r{i}", server=target).returncode == 0
    listed = json.loads(cli("runs", "list", "--limit", "2", "--json", server=target).stdout)
    assert [r["run_id"] for r in listed["runs"]] == ["r2", "r1"]


@pytest.mark.parametrize("args, code, needle", [
    (["recommend", "--params", "-1", "--tokens", "100B"], 2, "spec.n_params"),
    (["recommend", "--params", "abc", "--tokens", "100B"], 2, "--params"),
    (["recommend", "--params", "1B", "--tokens", "1B", "--architecture", "rnn"], 2,
     "spec.architecture"),
    (["report", "--params", "1B", "--tokens", "1M", "--lr", "1e-3", "--batch-size-tokens", "2M",
      "--weight-decay", "0.1", "--loss", "2"], 2, "hyperparameters.batch_size_tokens"),
    (["report", "--params", "1B", "--tokens", "1B", "--lr", "1e-3", "--batch-size-tokens", "1M",
      "--weight-decay", "0.1"], 2, "--loss"),
    (["runs", "show", "nope"], 4, "nope"),
    (["recommend", "--frobnicate"], 2, "--frobnicate"),
])
def test_errors_are_one_line_with_meaningful_exit_codes(target, args, code, needle):
    out = cli(*args, server=target)
    assert out.returncode == code
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]
    assert out.stdout == ""


def test_unreachable_server_exits_3():
    out = cli("recommend", "--params", "1B", "--tokens", "20B", server="127.0.0.1:1")
    assert out.returncode == 3
    assert out.stderr.count("\n") == 1 and "cannot reach" in out.stderr
