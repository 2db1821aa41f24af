"""The service learns from stored runs; the backtest command's JSON contract."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark_db.store import RunStore
from clients.client import Client, spec
from hparamrec.v1 import recommender_pb2 as pb
from tests.factories import SWEEP_GROUPS, synthetic_sweep, true_optimum
from tests.integration.in_process_server import QUICK_REFITS, running_service

pytestmark = pytest.mark.integration
HPARAMREC = str(Path(sys.executable).parent / "hparamrec")


def test_service_serves_the_learned_model_once_runs_are_stored(tmp_path):
    url = f"sqlite:///{tmp_path / 'learn.db'}"
    store = RunStore(url)
    store.add_many("default", synthetic_sweep())
    store.close()
    with running_service(url, refit_debounce_seconds=QUICK_REFITS) as svc:
        assert svc.registry.wait_idle(timeout=120)
        n, d = 4e8, 2e10  # between the stored sizes
        with Client(f"127.0.0.1:{svc.port}", retries=0) as client:
            rec = client.recommend(spec(n_params=n, n_tokens=d), pb.Pins(weight_decay=0.1))
        assert rec.model_versions[0].startswith("auto[")
        assert any("fitted on" in s.detail for s in rec.sources if s.field == "lr")
        assert rec.lr == pytest.approx(true_optimum(n, d)[0], rel=0.25)
        assert rec.lr_interval.lo <= rec.lr <= rec.lr_interval.hi


def write_csv(path: Path, reports) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run_id", "n_params", "n_tokens", "lr", "batch_size_tokens",
                         "weight_decay", "final_loss", "status"])
        for r in reports:
            writer.writerow([r.run_id, r.spec.n_params, r.spec.n_tokens, repr(r.hyperparameters.lr),
                             repr(r.hyperparameters.batch_size_tokens), r.hyperparameters.weight_decay,
                             r.outcome.final_loss, r.outcome.status.value])


def test_backtest_json_contract(tmp_path):
    runs = tmp_path / "runs.csv"
    write_csv(runs, synthetic_sweep(groups=SWEEP_GROUPS[:5]))
    context = tmp_path / "context.csv"
    write_csv(context, synthetic_sweep(groups=SWEEP_GROUPS[5:], seed=3))
    out = subprocess.run([HPARAMREC, "backtest", "--runs", str(runs), "--format", "csv",
                          "--context", str(context), "--predictor", "surface", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert len(result["groups"]) == 5  # context runs are never scored
    rows = {}
    with runs.open() as f:
        for row in csv.DictReader(f):
            rows.setdefault((float(row["n_params"]), float(row["n_tokens"])), []).append(
                (float(row["lr"]), float(row["batch_size_tokens"])))
    for group in result["groups"]:
        assert set(group) >= {"n_params", "n_active_params", "n_tokens", "recommendation", "points"}
        rec = group["recommendation"]
        assert set(rec) >= {"lr", "batch_size_tokens", "weight_decay", "qat_fraction",
                            "lr_interval", "batch_size_tokens_interval"}
        assert rec["lr_interval"][0] <= rec["lr"] <= rec["lr_interval"][1]
        copied = [(p["lr"], p["batch_size_tokens"]) for p in group["points"]]
        assert copied == rows[(group["n_params"], group["n_tokens"])]  # exactly the input rows
        assert all(p["loss_lo"] <= p["loss_pred"] <= p["loss_hi"] for p in group["points"])


def noisy_copies(reports):
    """The runs as an export read back would hold them: float noise in the sizes."""
    return [r.model_copy(update={"run_id": f"copy-{r.run_id}", "spec": r.spec.model_copy(
        update={"n_params": r.spec.n_params * (1 + 1e-9),
                "n_active_params": r.spec.n_active_params * (1 + 1e-9)})}) for r in reports]


def test_backtest_never_fits_a_fold_on_context_runs_of_its_held_out_group():
    """All one's sweeps as --context and some of them as --runs is an easy mistake: each fold
    fitted on the held-out group's own runs too, and scored as if it had not. A fold's model is
    now the one fitted on the other groups' runs and context runs only."""
    from predictor.backtest import backtest
    from predictor.predictors import fit_predictor
    from predictor.table import RunTable

    groups = SWEEP_GROUPS[:3]
    runs = synthetic_sweep(groups=groups)
    context = synthetic_sweep(groups=SWEEP_GROUPS[3:5], seed=3) + noisy_copies(runs)
    result = backtest(RunTable.from_runs(runs), "surface", RunTable.from_runs(context))
    for group, (n, d) in zip(result["groups"], groups):
        def other(r):
            return not (r.spec.n_params == pytest.approx(n, rel=1e-6)
                        and r.spec.n_tokens == pytest.approx(d, rel=1e-6))

        held = RunTable.from_runs([r for r in runs if not other(r)])
        fold = fit_predictor("surface", RunTable.from_runs(
            [r for r in runs if other(r)] + [r for r in context if other(r)]))
        assert [p["loss_pred"] for p in group["points"]] == list(fold.predict(held).mean)
        assert group["context_runs_left_out"] == len(held)


def test_backtest_notes_the_context_runs_it_left_out(tmp_path):
    runs, context = tmp_path / "runs.csv", tmp_path / "context.csv"
    sweep = synthetic_sweep(groups=SWEEP_GROUPS[:2])
    write_csv(runs, sweep)
    write_csv(context, synthetic_sweep(groups=SWEEP_GROUPS[2:4], seed=3) + noisy_copies(sweep))
    out = subprocess.run([HPARAMREC, "backtest", "--runs", str(runs), "--format", "csv",
                          "--context", str(context), "--predictor", "prior", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stderr == (f"note: --context holds {len(sweep)} runs of groups in {runs}; each "
                          "fold left out those of the group it held out\n")


def steplaw_backtest_table(tmp_path, rows: str) -> subprocess.CompletedProcess:
    """`hparamrec backtest --predictor prior` of a Step Law file of these rows, as a table."""
    runs = tmp_path / "sweep.csv"
    runs.write_text("lr,bs,loss,smooth loss,exp_name,D,N\n" + rows)
    out = subprocess.run([HPARAMREC, "backtest", "--runs", str(runs), "--format", "steplaw",
                          "--predictor", "prior"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    return out


def test_backtest_table_does_not_score_a_group_of_one_configuration(tmp_path):
    """The nearest point to any recommendation is its only one: such a group scored 0.000% and
    pulled the mean regret down."""
    out = steplaw_backtest_table(tmp_path, "1e-3,256,2.6,2.6,a,4e9,1e9\n"
                                           "1e-3,256,2.61,2.61,a2,4e9,1e9\n"
                                           "1e-3,256,2.5,2.5,c,8e9,1e9\n"
                                           "8e-3,256,2.4,2.4,d,8e9,1e9\n")
    one = next(line for line in out.stdout.splitlines() if "│ 4B " in line)
    assert "n/a: one configuration" in one and "0.000%" not in one
    last = out.stdout.strip().splitlines()[-1]
    assert last.endswith("; 1 group(s) of one configuration not scored")
    assert "0.000%" not in last  # the mean is the other group's alone


def test_backtest_of_mixture_of_experts_groups(tmp_path):
    """The held-out spec is rebuilt from the runs' sizes: fewer active parameters than
    parameters is a MoE (it was taken for a dense model and refused)."""
    runs = tmp_path / "moe.csv"
    write_csv(runs, synthetic_sweep(groups=SWEEP_GROUPS[:3]))
    rows = list(csv.reader(runs.open()))
    with runs.open("w", newline="") as f:  # the same sweeps, a quarter of each model active
        writer = csv.writer(f)
        writer.writerow([*rows[0], "n_active_params"])
        writer.writerows([*row, float(row[1]) / 4] for row in rows[1:])
    out = subprocess.run([HPARAMREC, "backtest", "--runs", str(runs), "--format", "csv",
                          "--predictor", "prior", "--json"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    groups = json.loads(out.stdout)["groups"]
    assert len(groups) == 3
    assert all(g["n_active_params"] == g["n_params"] / 4 for g in groups)


def test_backtest_table_of_a_group_with_no_completed_run(tmp_path):
    """Such a group has no best loss to score against: the table said so with a traceback."""
    out = steplaw_backtest_table(tmp_path, "1e-3,256,nan,nan,a,4e9,1e9\n"
                                           "2e-3,256,nan,nan,b,4e9,1e9\n"
                                           "1e-3,256,2.5,2.5,c,8e9,1e9\n"
                                           "2e-3,256,2.4,2.4,d,8e9,1e9\n")
    assert "n/a: no completed run" in out.stdout
    assert "1 group(s) without a completed run not scored" in out.stdout


def test_backtest_of_one_group_says_its_figures_are_the_published_laws(tmp_path):
    """Leave-one-group-out on one group fits on nothing; its regret passed for a fit's."""
    runs = tmp_path / "runs.csv"
    write_csv(runs, synthetic_sweep(groups=SWEEP_GROUPS[:1]))
    out = subprocess.run([HPARAMREC, "backtest", "--runs", str(runs), "--format", "csv",
                          "--predictor", "surface", "--json"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)["groups"]) == 1
    assert out.stderr == (f"note: {runs} holds one group, so its fold fits on no runs: the "
                          "figures are those of the published laws (--context adds runs to fit "
                          "on)\n")


def test_backtest_rejects_an_unknown_predictor(tmp_path):
    runs = tmp_path / "runs.csv"
    write_csv(runs, synthetic_sweep(groups=SWEEP_GROUPS[:2]))
    out = subprocess.run([HPARAMREC, "backtest", "--runs", str(runs), "--format", "csv",
                          "--predictor", "oracle"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.startswith("error: --predictor")


@pytest.mark.parametrize("bad", ["runs", "context"])
def test_backtest_names_the_file_of_a_bad_row(tmp_path, bad):
    good = tmp_path / "good.csv"
    write_csv(good, synthetic_sweep(groups=SWEEP_GROUPS[:2]))
    broken = tmp_path / "badrow.csv"
    broken.write_text("run_id,n_params,n_tokens,lr,batch_size_tokens,weight_decay,final_loss\n"
                      "a,1e9,2e10,1e-3,1e6,0.1,2.5\n"
                      "b,1e9,2e10,-1e-3,1e6,0.1,2.6\n")
    files = {"runs": good, "context": good} | {bad: broken}
    out = subprocess.run([HPARAMREC, "backtest", "--runs", str(files["runs"]), "--format", "csv",
                          "--context", str(files["context"]), "--predictor", "prior"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.splitlines()  # as import names it
    assert len(lines) == 1 and lines[0].startswith(f"error: {broken}: row 3: lr: ")


def test_a_service_stopped_before_its_first_refits_end_never_says_it_was_warm(tmp_path, caplog):
    """Its warm-up ended on the stop and logged "warm: the first refits ... took" all the same."""
    import logging
    import time

    url = f"sqlite:///{tmp_path / 'cold.db'}"
    store = RunStore(url)
    store.add_many("default", synthetic_sweep())
    store.close()
    caplog.set_level(logging.INFO, logger="hparamrec.server")
    with running_service(url, predictor="auto") as svc:
        assert svc.registry.busy("default")  # its first refit is under way
    time.sleep(0.5)  # the warm-up thread notices the stop within 0.1 s
    assert "warm:" not in caplog.text
