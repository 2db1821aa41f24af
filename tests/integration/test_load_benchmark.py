"""benchmarks/load.py end to end, briefly: it starts a real server, drives every scenario and
reports each without errors (the figures themselves come from a full run on a quiet machine)."""

import subprocess
import sys

import pytest

from benchmarks.load import ROOT

pytestmark = pytest.mark.integration


def test_the_load_benchmark_drives_every_scenario(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.load", "--seconds", "0.5", "--clients", "4",
         "--processes", "2", "--no-write", "--data", str(tmp_path / "no-sweep.csv")],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and "/s |" in line]
    assert [row.split(" | ")[0] for row in rows] == [
        "| grpc.health Check (ceiling)", "| Recommend, repeated spec", "| Recommend, varied specs",
        "| ReportRun (durable, SQLite)"]
    assert all(row.split(" | ")[5] == "0" for row in rows), rows  # no call failed
    assert all(float(row.split(" | ")[1].rstrip("/s").replace(",", "")) > 0 for row in rows)
