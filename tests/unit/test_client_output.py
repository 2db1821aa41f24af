"""What the CLI prints and writes, from models built here (no server)."""

import io
import json
from datetime import UTC, datetime

import pytest

from clients import plot, render
from clients.export import write_csv, write_jsonl
from clients.models import (Hyperparameters, Interval, Recommendation, Run, RunOutcome,
                            RunStatus, Source, TrainingSpec)

SPEC = TrainingSpec(n_params=1.3e9, n_active_params=1.3e9, n_tokens=1e11, seq_len=2048,
                    architecture="dense", optimizer="adamw", weight_bits=16)


def law(field, name, detail="formula (paper)"):
    return Source(field=field, name=name, version="v1", detail=detail)


def recommendation(sources, versions=("prior@1",)) -> Recommendation:
    return Recommendation(lr=1e-3, lr_interval=Interval(lo=5e-4, hi=2e-3), batch_size_tokens=1e6,
                          batch_size_tokens_interval=Interval(lo=5e5, hi=2e6), spec=SPEC,
                          sources=sources, model_versions=list(versions))


def test_why_names_the_law_behind_the_lr_when_each_value_has_its_own():
    rec = recommendation([law("lr", "steplaw_lr", "eta* = ... (Li et al. 2025)"),
                          law("batch_size_tokens", "steplaw_batch"),
                          law("weight_decay", "power_lines_timescale"),
                          law("predicted_loss", "epoch_chinchilla_loss")])
    assert render.explanation(rec) == (
        "why: learning rate from steplaw_lr: eta* = ... (Li et al. 2025); batch size, weight "
        "decay and predicted loss from other sources (--explain); published laws only "
        "(prior@1): no model learned from your runs yet")


def test_why_names_the_model_behind_most_values_and_what_was_pinned():
    fitted = "argmin of the surface model fitted on 1911 runs"
    rec = recommendation([law("lr", "surface", fitted), law("batch_size_tokens", "pinned"),
                          law("predicted_loss", "surface", fitted),
                          law("weight_decay", "power_lines_timescale"),
                          law("weight_decay", "prior_bowl")],
                         versions=("surface@3", "prior@1"))
    assert render.explanation(rec) == (
        f"why: learning rate and predicted loss from surface: {fitted}; weight decay from "
        "other sources (--explain); pinned: batch size")


def test_why_when_everything_is_pinned():
    rec = recommendation([law(f, "pinned") for f in ("lr", "batch_size_tokens")])
    assert render.explanation(rec) == "why: every value was pinned by the caller"


@pytest.mark.parametrize("width", [60, 80])
def test_the_table_never_cuts_a_number_short(monkeypatch, width):
    from rich.console import Console

    out = io.StringIO()
    monkeypatch.setattr(render, "console", Console(file=out, width=width))
    rec = recommendation([law("lr", "a_source_name_long_enough_to_need_a_wide_column"),
                          law("batch_size_tokens", "steplaw_batch")])
    rec = rec.model_copy(update={"lr": 0.000893214, "lr_interval": Interval(lo=0.000612345,
                                                                            hi=0.00205123)})
    render.recommendation(rec)
    text = out.getvalue()
    for shown in ("0.000893", "0.000612 - 0.00205", "500K - 2M"):
        assert shown in text


LONG_SOURCE = "a_source_name_long_enough_to_need_a_wide_column"


@pytest.mark.parametrize("width, source_shown", [(60, "left out"), (80, "cut"), (120, "whole")])
def test_source_names_are_cut_or_left_out_never_folded(monkeypatch, width, source_shown):
    """Folded into a narrow column, a source name ran down the screen a few letters a line."""
    from rich.console import Console

    out = io.StringIO()
    monkeypatch.setattr(render, "console", Console(file=out, width=width))
    render.recommendation(recommendation([law("lr", LONG_SOURCE)]))
    table = out.getvalue().split("why:")[0].splitlines()
    lr_line = next(line for line in table if "learning rate" in line)
    assert max(map(len, table)) <= width
    assert len(table) == 10  # title, blank, header, rule, five rows, blank: nothing wrapped
    shown = lr_line.split()[-1]
    if source_shown == "left out":
        assert not any("source" in line for line in table) and shown == "0.002"
    elif source_shown == "cut":
        assert shown.endswith("…") and LONG_SOURCE.startswith(shown[:-1]) and len(shown) > 10
    else:
        assert shown == LONG_SOURCE


def run(run_id, lr=1e-3, status=RunStatus.COMPLETED, loss=2.5, metadata=None, spec=SPEC):
    return Run(run_id=run_id, spec=spec,
               hyperparameters=Hyperparameters(lr=lr, batch_size_tokens=1e6, weight_decay=0.1,
                                               qat_fraction=0.0),
               outcome=RunOutcome(status=status, final_loss=loss), metadata=metadata or {},
               source="report", created_at=datetime(2026, 1, 1, tzinfo=UTC))


def test_export_writes_the_import_format():
    runs = [run("a", metadata={"z": "1", "cluster": "a100"}),
            run("b", status=RunStatus.DIVERGED, loss=None)]
    out = io.StringIO()
    assert write_jsonl(runs, out) == 2
    first, second = [json.loads(line) for line in out.getvalue().splitlines()]
    assert first["metadata"] == {"cluster": "a100", "z": "1"}
    assert list(first["metadata"]) == ["cluster", "z"]  # sorted: the same runs, the same file
    assert "final_loss" not in second and second["status"] == "diverged"
    assert "source" not in first and "created_at" not in first
    out = io.StringIO()
    write_csv(runs, out)
    header, row_a, row_b = out.getvalue().splitlines()
    assert header.endswith(",recommendation_id,trial_id,metadata.cluster,metadata.z")
    assert row_a.startswith("a,1300000000.0,1300000000.0,100000000000.0,2048,dense,adamw,16,0.001,")
    assert row_b.endswith(",diverged,,,,,")


@pytest.mark.parametrize("file_format", ["csv", "jsonl"])
def test_exported_trial_ids_import_as_labels(tmp_path, file_format):
    from benchmark_db.importers import read_runs
    from clients.export import WRITERS

    runs = [run("t").model_copy(update={"trial_id": "2-5"}), run("own")]
    path = tmp_path / f"runs.{file_format}"
    with open(path, "w", newline="") as f:
        WRITERS[file_format](runs, f)
    imported = {r.run_id: r for r in read_runs(path, file_format)}
    assert imported["t"].metadata == {"imported_trial_id": "2-5"} and imported["t"].trial_id == ""
    assert imported["own"].metadata == {}


def test_plot_axes_cover_the_recommendation_and_the_runs():
    rec = recommendation([])
    lrs, batches = plot.axes(rec, [run("far", lr=0.5)], points=7)
    assert len(lrs) == len(batches) == 7
    assert lrs[0] == pytest.approx(1e-4 / 1.25) and lrs[-1] == pytest.approx(0.5 * 1.25)
    assert batches[0] == pytest.approx(1e6 / 8 / 1.25) and batches[-1] == pytest.approx(8e6 * 1.25)
    assert all(a < b for a, b in zip(lrs, lrs[1:]))


@pytest.mark.parametrize("pins", [{"lr": 1.0}, {"batch_size_tokens": 5e10}])
def test_plot_axes_end_exactly_at_the_caps_the_service_enforces(pins):
    rec = recommendation([]).model_copy(update=pins)  # a pin puts the recommendation there
    for points in range(5, 101):
        lrs, batches = plot.axes(rec, [], points)
        assert lrs[-1] <= 10.0 and batches[-1] <= SPEC.n_tokens
        assert all(a < b for a, b in zip(lrs, lrs[1:]))
    assert plot.log_axis(0.08, 10.0, 25)[-1] == 10.0 and plot.log_axis(0.08, 10.0, 25)[0] == 0.08


def test_plot_marks_runs_of_the_same_spec_only():
    other = SPEC.model_copy(update={"n_tokens": 2e11})
    quantized = SPEC.model_copy(update={"weight_bits": 4})
    longer = SPEC.model_copy(update={"seq_len": 2 * (SPEC.seq_len or 2048)})
    runs = [run("same"), run("other", spec=other), run("q", spec=quantized),
            run("long", spec=longer)]
    assert [r.run_id for r in plot.runs_of(SPEC, runs)] == ["same"]


def test_a_trial_is_shown_as_a_trial_with_the_optimum_s_interval(monkeypatch):
    from rich.console import Console

    out = io.StringIO()
    monkeypatch.setattr(render, "console", Console(file=out, width=100))
    render.recommendation(recommendation([law("lr", "refine")]).model_copy(update={"trial_id": "1-2"}))
    header = out.getvalue().splitlines()[2]
    assert header.split() == ["trial", "optimum's", "80%", "interval", "source"]


@pytest.mark.parametrize("width", [40, 60, 80, 100])
def test_runs_list_never_cuts_a_run_id(monkeypatch, width):
    from rich.console import Console

    out = io.StringIO()
    monkeypatch.setattr(render, "console", Console(file=out, width=width, force_terminal=True,
                                                   color_system=None))
    ids = ["792a8f6c0d5e4b1f9a3c2e7d8b6f4a10", "run-with-a-rather-long-name-2026-01"]
    render.runs_table([run(i) for i in ids])
    text = out.getvalue()
    assert "…" not in text and all(i in text for i in ids)
    assert max(map(len, text.splitlines())) <= width
    if width >= 80:  # room for the outcome beside the id
        assert "completed" in text


def test_runs_list_into_a_pipe_is_a_line_per_run_with_every_column(monkeypatch):
    from rich.console import Console

    monkeypatch.delenv("COLUMNS", raising=False)
    out = io.StringIO()
    monkeypatch.setattr(render, "console", Console(file=out))  # not a terminal: 80 columns
    ids = ["792a8f6c0d5e4b1f9a3c2e7d8b6f4a10", "nearly-every-step-law-run-id-is-this-long-1.00E-05"]
    render.runs_table([run(i) for i in ids])
    lines = out.getvalue().strip("\n").splitlines()
    assert lines[0].split() == ["run_id", "params", "tokens", "lr", "batch", "wd", "outcome",
                                "created"]
    for line, run_id in zip(lines[2:], ids, strict=True):
        assert line.split()[0] == run_id and "completed" in line and "2026-01-01" in line


def test_runs_show_prints_the_whole_run(monkeypatch):
    from rich.console import Console

    out = io.StringIO()
    monkeypatch.setattr(render, "console", Console(file=out, width=80))
    moe = SPEC.model_copy(update={"n_active_params": 2e8, "architecture": "moe",
                                  "seq_len": 4096, "weight_bits": 4})
    shown = run("q4", spec=moe, metadata={"cluster": "a100"}).model_copy(
        update={"hyperparameters": Hyperparameters(lr=1e-3, batch_size_tokens=1e6,
                                                   weight_decay=0.1, qat_fraction=0.3),
                "trial_id": "3-7"})
    render.run_detail(shown)
    lines = [" ".join(line.split()) for line in out.getvalue().splitlines()]
    for expected in ("run_id q4", "params 1.3B", "active params 200M (moe)", "tokens 100B",
                     "seq len 4096", "architecture moe", "optimizer adamw", "weight bits 4",
                     "learning rate 0.001", "batch (tokens) 1M", "weight decay 0.1",
                     "QAT fraction 0.3", "outcome completed 2.5000", "created 2026-01-01 00:00",
                     "source report", "trial_id 3-7", "cluster = a100"):
        assert expected in lines, (expected, lines)


def test_backtest_says_diverged_where_the_nearest_point_has_no_loss(monkeypatch):
    """Recommending into a diverged run (no loss) has no finite regret: the row says so and the
    mean is over the other groups, with the count, instead of inf%."""
    import numpy as np
    from rich.console import Console

    from predictor.table import RunTable

    out = io.StringIO()
    monkeypatch.setattr(render, "console", Console(file=out, width=200))
    n = np.array([1e9, 1e9, 1e9, 2e9, 2e9])
    d = 20 * n
    table = RunTable(n_params=n, n_active_params=n, n_tokens=d, seq_len=np.full(5, 2048.0),
                     weight_bits=np.full(5, 16.0), lr=np.array([1e-3, 2e-3, 8e-3, 1e-3, 2e-3]),
                     batch_size_tokens=np.full(5, 1e6), weight_decay=np.full(5, 0.1),
                     qat_fraction=np.zeros(5), loss=np.array([2.5, 2.45, np.nan, 2.4, 2.3]),
                     diverged=np.array([False, False, True, False, False]))

    def group(i, lr, points):
        return {"n_params": n[i], "n_active_params": n[i], "n_tokens": d[i],
                "recommendation": {"lr": lr, "batch_size_tokens": 1e6},
                "points": [{"loss_pred": 2.4 + k / 10, "loss_lo": 2.0, "loss_hi": 3.0}
                           for k in range(points)]}

    render.backtest_table(table, {"predictor": "prior",
                                  "groups": [group(0, 7e-3, 3), group(3, 1e-3, 2)]})
    text = out.getvalue()
    assert "inf" not in text
    rows = [next(line for line in text.splitlines() if f"│ {size} " in line) for size in ("1B", "2B")]
    assert "diverged" in rows[0] and "4.348%" in rows[1]
    assert text.splitlines()[-1] == ("mean regret 4.348%, median 4.348% over the 1 of 2 groups "
                                     "with a finite regret; 1 recommended into a diverged run "
                                     "with no loss")
