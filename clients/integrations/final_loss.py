"""The final loss a completed run reports: the mean of the losses logged near its end, not one
step's loss, whose per-batch noise would make a worse configuration look best (tracking.py's
docstring says how the integrations use it)."""

import math
from collections import deque
from collections.abc import Iterable
from itertools import groupby

# The final loss of a completed run: the mean of the losses logged over this fraction of the
# steps run, at the end. The per-batch noise of one step's loss (sd ~1.2% of the loss on the
# Step Law sweep) averages down by sqrt(losses): 200 losses (a 10,000-step run logged every
# step) leave ~0.085%, under the 0.15% run-to-run noise the refinement's GP assumes. With cosine
# decay the learning rate changes by under 0.1% of its peak over the last 2% of the steps (to
# zero: it is that small there), so the loss hardly moves and the mean sits close to the end. Schedules that end in a steep decay (WSD,
# linear to zero) move more: lower it, or report an evaluation loss yourself.
FINAL_LOSS_WINDOW = 0.02
# Losses logged without a step: the mean of the last this many. 100 losses of 1.2% noise leave
# 0.12%, and are at most 2% of a run logged every step for 5,000 steps or more.
FINAL_LOSS_COUNT = 100
# At most this many losses are kept, whatever the window (a bound on memory).
MAX_KEPT_LOSSES = 100_000

class FinalLoss:
    """The losses logged near the end of a run, and the final loss they make.

    window: the fraction of the steps run whose logged losses are averaged (0: the last loss
        logged). Steps are those given to add(); the last step is the largest one given, or the
        one given to value() (the run's last step, even if its loss was not logged).
    count: if any loss was logged without a step, the mean of the last `count` losses instead.

    A loss logged at step s stands for the steps since the previous loss logged, (prev, s]: a
    trainer that logs every `logging_steps` logs the mean loss over those steps. The mean over
    the window weights each loss by how many of its steps are in the window, so a loss whose
    interval only starts before the window counts for its steps inside it, and losses logged at
    uneven intervals count for the steps they cover. Logged every step, every loss in the window
    counts once. Several losses logged at one step (micro-batches) share its interval.

    Memory stays bounded: a loss logged at step s can be in the window only if the run ends at
    S with S - window * S < s, and S >= the largest step seen, so older losses are dropped as
    steps advance (keeping at least the last `count`, and at most MAX_KEPT_LOSSES); `floor`
    keeps the step of the last one dropped, where the interval of the oldest kept one starts.
    state_dict() and load_state_dict() carry the losses over a checkpoint and a resume.
    """

    def __init__(self, window: float = FINAL_LOSS_WINDOW, count: int = FINAL_LOSS_COUNT):
        if not 0 <= window <= 1:
            raise ValueError(f"final_loss_window must be in [0, 1], not {window!r}")
        if int(count) != count or count < 1:
            raise ValueError(f"final_loss_count must be a positive integer, not {count!r}")
        self.window, self.count = float(window), int(count)
        self.losses: deque[tuple[int | None, float]] = deque()
        self.steps_known = True
        self.last_step: int | None = None
        self.floor = 0  # the step before the interval of the oldest loss kept

    def add(self, value: float, step: int | None = None) -> None:
        if step is None:
            self.steps_known = False
        else:
            step = int(step)
            self.last_step = step if self.last_step is None else max(self.last_step, step)
        self.losses.append((step, value))
        while len(self.losses) > MAX_KEPT_LOSSES:
            self._drop()
        if not self.steps_known:
            while len(self.losses) > self.count:
                self._drop()
            return
        horizon = self.last_step * (1 - self.window)  # no window ending later starts before it
        while len(self.losses) > self.count and self.losses[0][0] <= horizon:
            self._drop()

    def _drop(self) -> None:
        step, _ = self.losses.popleft()
        # Losses left at the same step share its interval: it still starts where it did.
        if step is not None and not (self.losses and self.losses[0][0] == step):
            self.floor = step

    def merged(self, history: Iterable[tuple[int, float]]) -> "FinalLoss":
        """The same window over the (step, loss) pairs of `history` (a trainer's record of every
        loss logged, restored on resume) and the losses added here at steps it lacks; this one
        as it is if the history is empty or losses were added without steps."""
        history = sorted(((int(s), float(v)) for s, v in history if math.isfinite(v)),
                         key=lambda entry: entry[0])
        if not history or not self.steps_known:
            return self
        known = {s for s, _ in history}
        own = [(s, v) for s, v in self.losses if s not in known]
        out = FinalLoss(self.window, self.count)
        if own and own[0][0] < history[0][0]:  # ours start first: so does their interval
            out.floor = self.floor
        for step, value in sorted(history + own, key=lambda entry: entry[0]):
            out.add(value, step)
        return out

    def state_dict(self) -> dict:
        """What load_state_dict() needs to go on after a resume (plain lists and numbers)."""
        return {"losses": [[s, v] for s, v in self.losses], "steps_known": self.steps_known,
                "last_step": self.last_step, "floor": self.floor}

    def load_state_dict(self, state: dict) -> None:
        self.losses = deque((s, float(v)) for s, v in state["losses"])
        self.steps_known = bool(state["steps_known"])
        self.last_step = state["last_step"]
        self.floor = state.get("floor", 0)

    def last_label(self, finite: bool = False) -> str:
        step = self.losses[-1][0] if self.losses else None
        return _last_label(step, "last finite loss logged" if finite else "last loss logged")

    def value(self, last_step: int | None = None) -> tuple[float, str] | None:
        """The final loss and how it was computed (for the run's metadata), or None if no loss
        was logged. last_step: the run's last step, if later than the last one logged."""
        if not self.losses:
            return None
        last_value = self.losses[-1][1]
        if self.window == 0:
            return last_value, _last_label(self.losses[-1][0])
        if not self.steps_known:
            values = [v for _, v in self.losses][-self.count:]
            if len(values) == 1:
                return last_value, _last_label(None)
            return (math.fsum(values) / len(values),
                    f"mean of the last {len(values)} losses logged (no steps given)")
        end = max(self.last_step, int(last_step)) if last_step is not None else self.last_step
        first = math.floor(end - self.window * end)  # the window: steps first+1 .. end
        kept, previous = [], self.floor
        for step, group in groupby(sorted(self.losses, key=lambda entry: entry[0]),
                                   key=lambda entry: entry[0]):
            values = [v for _, v in group]
            steps_in_window = step - max(previous, first)
            if steps_in_window > 0:
                kept += [(step, v, steps_in_window / len(values)) for v in values]
            previous = step
        if not kept:
            return last_value, _last_label(self.losses[-1][0])
        if len(kept) == 1:
            return kept[0][1], _last_label(kept[0][0])
        weights = [w for _, _, w in kept]
        mean = math.fsum(v * w for _, v, w in kept) / math.fsum(weights)
        weighted = ("" if max(weights) - min(weights) <= 1e-9 * max(weights)
                    else ", each weighted by its steps in the window")
        return (mean, f"mean of {len(kept)} losses over steps {kept[0][0]}-{kept[-1][0]}"
                      f"{weighted} (the last {100 * self.window:.3g}% of {end})")


def _last_label(step: int | None, what: str = "last loss logged") -> str:
    return what + (f" (step {step})" if step is not None else "")
