"""`hparamrec backtest --predictor pfn` end to end, and the service serving the PFN."""

import json
import subprocess

import pytest

from benchmark_db.records import Pins, TrainingSpec
from benchmark_db.store import RunStore
from predictor.registry import ModelRegistry
from tests.factories import SWEEP_GROUPS, synthetic_sweep, true_optimum
from tests.integration.test_learning import HPARAMREC, write_csv

pytestmark = pytest.mark.integration


def test_backtest_with_the_pfn(tmp_path):
    runs = tmp_path / "runs.csv"
    write_csv(runs, synthetic_sweep(groups=SWEEP_GROUPS[:4]))
    out = subprocess.run([HPARAMREC, "backtest", "--runs", str(runs), "--format", "csv",
                          "--predictor", "pfn", "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["predictor"] == "pfn" and len(result["groups"]) == 4
    for group in result["groups"]:
        assert group["model_version"].startswith("pfn@")
        rec = group["recommendation"]
        assert rec["lr_interval"][0] <= rec["lr"] <= rec["lr_interval"][1]
        assert all(p["loss_lo"] <= p["loss_pred"] <= p["loss_hi"] for p in group["points"])


def test_the_registry_fits_the_pfn_on_stored_runs(tmp_path):
    store = RunStore(f"sqlite:///{tmp_path / 'pfn.db'}")
    store.add_many("default", synthetic_sweep())
    registry = ModelRegistry(store, kind="pfn", debounce_seconds=0)  # no burst to wait out
    try:
        registry.schedule_refit("default")
        assert registry.wait_idle(timeout=120)
        predictor = registry.get("default")
        assert predictor is not None and predictor.version.startswith("pfn@")
        n, d = 4e8, 2e10
        rec = predictor.recommend(TrainingSpec(n_params=n, n_active_params=n, n_tokens=d),
                                  Pins(weight_decay=0.1))
        # Between stored sizes, within a factor of 2 of the sweep generator's optimum.
        assert rec.lr == pytest.approx(true_optimum(n, d)[0], rel=1.0)
    finally:
        registry.close()
        store.close()
