"""benchmarks/load.py end to end, briefly: it starts a real server, drives every scenario and
reports each without errors (the figures themselves come from a full run on a quiet machine)."""

import subprocess
import sys

import pytest

from benchmarks.load import ROOT

pytestmark = pytest.mark.integration


def small_sweep(path):
    """Two groups of six runs in the Step Law schema: the benchmark seeds the server with them."""
    rows = ["lr,bs,loss,smooth loss,exp_name,D,N"]
    for n, d in ((2e8, 4e9), (4e8, 8e9)):
        for k, lr in enumerate((2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3, 8e-3)):
            loss = 2.6 + 0.05 * (k - 2.5) ** 2
            rows.append(f"{lr},256,{loss},{loss},run{n:g}-{k},{d:g},{n:g}")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_the_load_benchmark_drives_every_scenario(tmp_path):
    # The benchmark waits for the server's first refit, which waits out the refit debounce
    # (2 s by default) first: a short one starts it at once.
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.load", "--seconds", "0.5", "--clients", "4",
         "--processes", "2", "--no-write", "--data", str(small_sweep(tmp_path / "sweep.csv")),
         "--set", "HPARAMREC_REFIT_DEBOUNCE_SECONDS=0.1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "holds the 12 runs of the Step Law sweep" in out.stdout
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and "/s |" in line]
    assert [row.split(" | ")[0] for row in rows] == [
        "| grpc.health Check (ceiling)", "| Recommend, repeated spec", "| Recommend, varied specs",
        "| ReportRun (durable, SQLite)"]
    assert all(row.split(" | ")[5] == "0" for row in rows), rows  # no call failed
    assert all(float(row.split(" | ")[1].rstrip("/s").replace(",", "")) > 0 for row in rows)


def test_the_load_benchmark_refuses_a_missing_sweep(tmp_path):
    """An empty store would be answered by the published laws, not the learned model the
    benchmark is meant to measure (a run with a mistyped path measured that)."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.load", "--no-write", "--data", str(tmp_path / "no.csv")],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "no such file (the Step Law dense sweep)" in out.stderr
