"""`hparamrec plot --study` without a server: which runs make a study's history, and its figure."""

from datetime import UTC, datetime

import pytest

from benchmark_db.importers import generic
from clients import study_plot
from clients.models import (Hyperparameters, Interval, Pins, Recommendation, Run, RunOutcome,
                            RunStatus, TrainingSpec)

SPEC = TrainingSpec(n_params=1e9, n_active_params=1e9, n_tokens=2e10, seq_len=2048,
                    architecture="dense", optimizer="adamw", weight_bits=16)


def run(run_id, lr=1e-3, batch=1e6, wd=0.1, status=RunStatus.COMPLETED, loss=2.5, trial="",
        metadata=None, spec=SPEC):
    return Run(run_id=run_id, spec=spec, trial_id=trial, metadata=metadata or {},
               hyperparameters=Hyperparameters(lr=lr, batch_size_tokens=batch, weight_decay=wd,
                                               qat_fraction=0.0),
               outcome=RunOutcome(status=status, final_loss=loss),
               created_at=datetime(2026, 1, 1, tzinfo=UTC))


def ids(runs):
    return [r.run_id for r in runs]


def test_the_study_is_the_spec_with_its_seq_len_and_pins():
    runs = [run("same"), run("more-tokens", spec=SPEC.model_copy(update={"n_tokens": 4e10})),
            run("seq-4096", spec=SPEC.model_copy(update={"seq_len": 4096})),
            run("wd-within-2%", wd=0.1015), run("wd-0.3", wd=0.3), run("batch-2M", batch=2e6)]
    assert ids(study_plot.study_runs(SPEC, Pins(), runs)) == [
        "same", "wd-within-2%", "wd-0.3", "batch-2M"]
    assert ids(study_plot.study_runs(SPEC, Pins(weight_decay=0.1), runs)) == [
        "same", "wd-within-2%", "batch-2M"]
    assert ids(study_plot.study_runs(SPEC, Pins(weight_decay=0.1, batch_size_tokens=1e6),
                                     runs)) == ["same", "wd-within-2%"]


def test_a_qat_pin_counts_only_for_quantized_specs():
    quantized = SPEC.model_copy(update={"weight_bits": 4})
    runs = [run("plain"), run("q", spec=quantized)]
    assert ids(study_plot.study_runs(SPEC, Pins(qat_fraction=0.3), runs)) == ["plain"]
    assert study_plot.study_runs(quantized, Pins(qat_fraction=0.3), runs) == []  # its qat is 0


def test_trials_are_runs_with_a_trial_id_here_or_where_they_were_imported_from():
    assert study_plot.is_trial(run("a", trial="1-0"))
    assert study_plot.is_trial(run("b", metadata={study_plot.IMPORTED_TRIAL_KEY: "3-2"}))
    assert not study_plot.is_trial(run("c", metadata={"cluster": "a100"}))
    assert study_plot.IMPORTED_TRIAL_KEY == generic.IMPORTED_TRIAL_KEY  # what import writes


def test_a_run_reported_against_a_trial_another_run_had_closed_is_an_own_run():
    """The study took it as a configuration of its own; the plot counted two explore trials
    where one was handed out."""
    runs = [run("first", trial="1-0"), run("late", lr=2e-3, trial="1-0"), run("mine", lr=3e-3)]
    h = study_plot.History(recommendation(), Pins(), runs)
    assert ids(h.trials) == ["first"]
    assert not h.is_trial(runs[1]) and not h.is_trial(runs[2])


def test_best_so_far_skips_diverged_and_failed_runs():
    runs = [run("d", status=RunStatus.DIVERGED, loss=None), run("a", loss=2.6),
            run("f", status=RunStatus.FAILED, loss=None), run("b", loss=2.7),
            run("d2", status=RunStatus.DIVERGED, loss=2.1), run("c", loss=2.5)]
    assert study_plot.best_so_far(runs) == [None, 2.6, 2.6, 2.6, 2.6, 2.5]
    h = study_plot.History(recommendation(), Pins(), runs)
    assert h.best.run_id == "c" and ids(h.with_status(RunStatus.DIVERGED)) == ["d", "d2"]


def recommendation(**update):
    return Recommendation(
        lr=1.2e-3, lr_interval=Interval(lo=8e-4, hi=1.8e-3), batch_size_tokens=1e6,
        batch_size_tokens_interval=Interval(lo=7e5, hi=1.5e6), weight_decay=0.1,
        predicted_loss=2.45, predicted_loss_interval=Interval(lo=2.4, hi=2.5), spec=SPEC,
        model_versions=["study-gp@1:study=1:completed=2:diverged=1", "prior@1"]).model_copy(
            update=update)


@pytest.mark.parametrize("pins", [Pins(), Pins(weight_decay=0.1, batch_size_tokens=1e6)])
def test_draw_writes_a_png_with_every_kind_of_run(tmp_path, pins):
    pytest.importorskip("matplotlib")
    runs = [run("own", lr=2e-3, loss=2.52), run("t0", trial="1-0", loss=2.48),
            run("t1", lr=1e-2, trial="1-1", status=RunStatus.DIVERGED, loss=None),
            run("own-failed", status=RunStatus.FAILED, loss=None),
            run("imported", lr=7e-4, batch=5e5, metadata={"imported_trial_id": "4-1"}, loss=2.9)]
    path = tmp_path / "study.png"
    study_plot.draw(str(path), study_plot.History(recommendation(), pins, runs))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000


def test_draw_copes_with_a_single_diverged_run(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "one.png"
    h = study_plot.History(recommendation(), Pins(),
                           [run("d", trial="1-0", status=RunStatus.DIVERGED, loss=None)])
    study_plot.draw(str(path), h)
    assert path.read_bytes()[:4] == b"\x89PNG" and h.best is None
