"""What the launcher integrations report after an exception (no server)."""

import pytest

from clients.integrations.tracking import outcome_of_exception
from clients.models import RunStatus


@pytest.mark.parametrize("error, status", [
    (RuntimeError("nan in gradients"), RunStatus.DIVERGED),
    (FloatingPointError(), RunStatus.DIVERGED),
    (RuntimeError("Function 'MulBackward0' returned nan values in its 0th output."), RunStatus.DIVERGED),
    (ValueError("loss is Inf at step 300"), RunStatus.DIVERGED),
    (Exception("Current loss scale already at minimum - cannot decrease scale anymore"),
     RunStatus.DIVERGED),
])
def test_exceptions_map_to_outcomes(error, status):
    outcome = outcome_of_exception(error, 3.0)
    assert outcome.status is status and outcome.final_loss == 3.0


@pytest.mark.parametrize("error", [
    RuntimeError("CUDA error: an illegal memory access was encountered"),
    FileNotFoundError("shard-00042.bin"), KeyError("input_ids"),
    RuntimeError("NCCL communicator was aborted on rank 3; information about infiniband"),
])
def test_an_exception_that_is_not_numerical_is_no_outcome(error):
    """A bug or a lost node says nothing about the hyperparameters: reported as diverged, it
    would rule out every higher lr for the study, and reported at all, the job requeued under
    its run_id could not report the run."""
    assert outcome_of_exception(error, 3.0) is None


@pytest.mark.parametrize("error", [
    KeyboardInterrupt(), SystemExit(143), MemoryError(),
    type("OutOfMemoryError", (RuntimeError,), {})("CUDA out of memory"),
])
def test_an_interruption_is_no_outcome(error):
    """Ctrl-C, a preemption's SIGTERM, out-of-memory: the run has not ended, and the job
    resumed or requeued under its run_id reports it."""
    assert outcome_of_exception(error, 3.0) is None


# The final loss of a completed run: the mean of the losses logged near the end (no server:
# the runs below do not report, reporting=False, and record what they would have reported).

import math  # noqa: E402

from clients.integrations.final_loss import (FINAL_LOSS_COUNT, FINAL_LOSS_WINDOW,  # noqa: E402
                                             MAX_KEPT_LOSSES, FinalLoss)
from clients.integrations.tracking import TrackedRun  # noqa: E402

SPEC = {"n_params": 1e6, "n_tokens": 1e8}
HP = {"lr": 1e-3, "batch_size_tokens": 64, "weight_decay": 0.1}


def offline_run(**options) -> TrackedRun:
    return TrackedRun(SPEC, hyperparameters=HP, reporting=False, **options)


def test_the_defaults():
    run = offline_run()
    assert (FINAL_LOSS_WINDOW, FINAL_LOSS_COUNT) == (0.02, 100)
    assert (run.final_losses.window, run.final_losses.count) == (0.02, 100)


def test_a_completed_run_reports_the_mean_of_the_losses_of_its_last_steps():
    run = offline_run()
    for step in range(1, 1001):  # losses in nats: a mean over 1000 would be a divergence
        assert run.log(2.0 + step / 1000, step=step)
    run.finish()
    # The last 2% of 1000 steps: 981-1000.
    assert run.outcome.final_loss == pytest.approx(2.0 + (981 + 1000) / 2 / 1000)
    assert run.final_loss_label == "mean of 20 losses over steps 981-1000 (the last 2% of 1000)"
    assert run.last_loss == 3.0


def test_the_window_is_a_fraction_of_the_steps_run_not_of_the_losses_logged():
    run = offline_run(final_loss_window=0.1)
    for step in range(10, 1001, 10):  # logged every 10 steps
        run.log(float(step), step=step)
    run.finish()
    assert run.outcome.final_loss == pytest.approx(sum(range(910, 1001, 10)) / 10)
    assert run.final_loss_label.startswith("mean of 10 losses over steps 910-1000")


def test_the_window_ends_at_the_last_step_run_and_holds_at_least_the_last_loss():
    run = offline_run()
    for step in (100, 200, 300, 400):
        run.log(float(step), step=step)
    run.finish(last_step=500)  # the last steps were not logged: (490, 500] holds no loss
    assert run.outcome.final_loss == 400.0
    assert run.final_loss_label == "last loss logged (step 400)"


def test_losses_logged_without_steps_fall_back_to_the_last_ones():
    run = offline_run()
    for k in range(500):
        run.log(float(k))
    run.finish()
    assert run.outcome.final_loss == pytest.approx(sum(range(400, 500)) / 100)
    assert run.final_loss_label == "mean of the last 100 losses logged (no steps given)"
    few = offline_run(final_loss_count=3)
    for value in (4.0, 3.0, 2.0, 1.5):
        few.log(value)
    few.finish()
    assert few.outcome.final_loss == pytest.approx(6.5 / 3)


@pytest.mark.parametrize("with_steps", [True, False])
def test_a_window_of_zero_reports_the_last_loss_logged(with_steps):
    run = offline_run(final_loss_window=0)
    for step in range(1, 101):
        run.log(1.0 / step, **({"step": step} if with_steps else {}))
    run.finish(last_step=100 if with_steps else None)
    assert run.outcome.final_loss == 1.0 / 100 == run.last_loss
    assert run.final_loss_label == ("last loss logged (step 100)" if with_steps
                                    else "last loss logged")


def test_memory_stays_bounded():
    by_step = FinalLoss()
    for step in range(1, 200_001):
        by_step.add(1.0, step)
    assert len(by_step.losses) <= 0.02 * 200_000 + 1
    by_count = FinalLoss()
    for _ in range(10_000):
        by_count.add(1.0)
    assert len(by_count.losses) == FINAL_LOSS_COUNT
    whole = FinalLoss(window=1)
    for step in range(1, MAX_KEPT_LOSSES + 1001):
        whole.add(float(step), step)
    assert len(whole.losses) == MAX_KEPT_LOSSES
    assert whole.value()[0] == pytest.approx(1000 + (MAX_KEPT_LOSSES + 1) / 2)


def test_a_diverged_run_still_reports_its_last_finite_loss():
    run = offline_run()
    for step in range(1, 101):
        run.log(2.0 + step, step=step)
    assert not run.log(float("nan"), step=101)
    assert run.outcome.status is RunStatus.DIVERGED
    assert run.outcome.final_loss == 102.0
    assert run.final_loss_label == "last finite loss logged (step 100)"
    run.finish()  # reported once: the end of training changes nothing
    assert run.outcome.final_loss == 102.0


def test_a_run_stopped_by_an_exception_reports_its_last_loss():
    run = offline_run()
    for step in range(1, 101):
        run.log(float(step), step=step)
    run.fail(RuntimeError("nan in gradients"))
    assert run.outcome.status is RunStatus.DIVERGED and run.outcome.final_loss == 100.0
    interrupted = offline_run()
    interrupted.log(1.0, step=1)
    interrupted.fail(KeyboardInterrupt())
    assert interrupted.outcome is None and interrupted.report is None  # not reported
    assert interrupted.final_loss_label is None


@pytest.mark.parametrize("options", [{"final_loss_window": -0.1}, {"final_loss_window": 1.5},
                                     {"final_loss_window": math.nan}, {"final_loss_count": 0}])
def test_a_bad_window_fails_before_training(options):
    with pytest.raises(ValueError, match="final_loss_"):
        offline_run(**options)
