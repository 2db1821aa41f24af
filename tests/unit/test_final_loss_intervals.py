"""FinalLoss (clients/integrations/tracking.py): each logged loss stands for the steps since the
previous one, and the losses collected carry over a checkpoint and a resume (no server)."""

import math

import pytest

from clients.integrations.final_loss import FinalLoss


def reference(losses: list[tuple[int, float]], window: float) -> float:
    """The window mean by its definition, over every loss logged (none dropped): the loss at
    step s stands for the steps (previous step logged, s], each counted if in the window."""
    end = max(s for s, _ in losses)
    first = math.floor(end - window * end)
    total = weight = 0.0
    previous = 0
    for step, value in losses:
        steps = max(0, step - max(previous, first))
        total, weight, previous = total + steps * value, weight + steps, step
    return total / weight


def test_losses_logged_at_uneven_intervals_count_for_their_steps_in_the_window():
    final = FinalLoss(window=0.2)
    for step, value in ((80, 9.0), (90, 1.0), (91, 2.0), (100, 3.0)):
        final.add(value, step)
    # The window is steps 81-100: the loss at 90 stands for 81-90, at 91 for 91, at 100 for 92-100.
    loss, label = final.value()
    assert loss == pytest.approx((10 * 1.0 + 1 * 2.0 + 9 * 3.0) / 20)
    assert label == ("mean of 3 losses over steps 90-100, each weighted by its steps in the "
                     "window (the last 20% of 100)")


def test_a_loss_whose_steps_begin_before_the_window_counts_for_those_inside_it():
    final = FinalLoss(window=0.015)  # 1000 steps: the window is 986-1000
    for step in range(10, 1001, 10):
        final.add(float(step), step)
    assert final.value()[0] == pytest.approx((5 * 990.0 + 10 * 1000.0) / 15)


def test_losses_logged_every_step_or_micro_batch_count_once_each():
    every = FinalLoss()
    for step in range(1, 1001):
        every.add(float(step), step)
    assert every.value() == (pytest.approx(sum(range(981, 1001)) / 20),
                             "mean of 20 losses over steps 981-1000 (the last 2% of 1000)")
    micro = FinalLoss(window=0.1)  # two micro-batch losses per step share its one step
    for step in range(1, 21):
        micro.add(float(step), step)
        micro.add(float(step) + 0.5, step)
    assert micro.value() == (pytest.approx(19.75), "mean of 4 losses over steps 19-20 "
                                                   "(the last 10% of 20)")


def test_dropping_old_losses_leaves_the_intervals_of_the_kept_ones():
    for spacing in (1, 7, 10):
        losses = [(step, math.sin(step)) for step in range(spacing, 20_001, spacing)]
        final = FinalLoss(window=0.02, count=1)
        for step, value in losses:
            final.add(value, step)
        assert len(final.losses) < len(losses)
        assert final.value()[0] == pytest.approx(reference(losses, 0.02))


def test_a_state_dict_carries_the_window_over_a_resume():
    losses = [(step, 5.0 / step) for step in range(3, 301, 3)]
    whole = FinalLoss(window=0.1)
    for step, value in losses:
        whole.add(value, step)
    before = FinalLoss(window=0.1)
    for step, value in losses[:95]:
        before.add(value, step)
    resumed = FinalLoss(window=0.1)
    resumed.load_state_dict(before.state_dict())
    for step, value in losses[95:]:
        resumed.add(value, step)
    assert resumed.value() == whole.value()


def test_merged_history_replaces_what_a_resumed_job_saw():
    history = [(step, 5.0 / step) for step in range(1, 101)]
    whole = FinalLoss(window=0.1)
    for step, value in history:
        whole.add(value, step)
    since_restart = FinalLoss(window=0.1)
    for step, value in history[96:]:
        since_restart.add(value, step)
    assert since_restart.value() != whole.value()
    assert since_restart.merged(history).value() == whole.value()
    # A history that lacks the last losses: those seen here fill them in.
    assert since_restart.merged(history[:97]).value() == whole.value()
    # No history, or none with a finite loss: what was seen here, as it was.
    assert since_restart.merged([]) is since_restart
    assert since_restart.merged([(5, math.nan)]) is since_restart
