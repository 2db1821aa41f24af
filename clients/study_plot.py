"""`hparamrec plot --study`: the refinement history of a spec's study, from the public API only.

The history is what a user can see of the study: the stored runs of the spec whose values match
the pins (the study key bins sizes and pins 2% wide), in the order they were reported, each an
explore trial (the first run reported with its trial_id, or imported with one, see
IMPORTED_TRIAL_KEY; a later one found the trial closed and joined as a configuration of its own)
or the user's own configuration; and the current exploit recommendation, which is conditioned on them.
Trials asked for but not yet reported are not runs, so they are not shown.

matplotlib (Agg backend) and numpy are imported only when a figure is drawn.
"""

import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

from clients.client import Client
from clients.models import Pins, Recommendation, Run, RunStatus, TrainingSpec
from clients.plot import same_spec, stored_runs_of
from clients.units import format_quantity

# The metadata label under which `hparamrec import` keeps a trial id from another database
# (benchmark_db/importers/generic.py IMPORTED_TRIAL_KEY; a unit test checks they agree).
IMPORTED_TRIAL_KEY = "imported_trial_id"
# A run's value matches a pin within this relative distance (the width of the study key's bins).
PIN_TOLERANCE = 0.02
PIN_NAMES = ("lr", "batch_size_tokens", "weight_decay", "qat_fraction")


@dataclass(frozen=True)
class History:
    rec: Recommendation  # the current exploit recommendation
    pins: Pins
    runs: list[Run]  # oldest first

    @property
    def trials(self) -> list[Run]:
        return [r for r in self.runs if self.is_trial(r)]

    @cached_property
    def _trial_run_ids(self) -> set[str]:
        """The first run reported against each trial: one that came after it found the trial
        closed, and the study took it as a configuration of its own."""
        first: dict[str, str] = {}
        for run in self.runs:
            if is_trial(run):
                first.setdefault(trial_key(run), run.run_id)
        return set(first.values())

    def is_trial(self, run: Run) -> bool:
        return run.run_id in self._trial_run_ids

    def with_status(self, status: RunStatus) -> list[Run]:
        return [r for r in self.runs if r.outcome.status is status]

    @property
    def best(self) -> Run | None:
        """The completed run with the lowest final loss (the first of equals)."""
        return min(self.with_status(RunStatus.COMPLETED), key=lambda r: r.outcome.final_loss,
                   default=None)


def is_trial(run: Run) -> bool:
    """A run reported against an explore trial (its trial id from this service, or from the
    one it came from)."""
    return bool(trial_key(run))


def trial_key(run: Run) -> str:
    return run.trial_id or run.metadata.get(IMPORTED_TRIAL_KEY, "")


def matches_pins(run: Run, spec: TrainingSpec, pins: Pins) -> bool:
    for name in PIN_NAMES:
        pin = getattr(pins, name)
        if pin is None or (name == "qat_fraction" and (spec.weight_bits or 16) >= 16):
            continue  # without quantization a QAT pin can only be 0: the study key drops it
        value = getattr(run.hyperparameters, name) or 0.0
        if not math.isclose(value, pin, rel_tol=PIN_TOLERANCE, abs_tol=1e-12):
            return False
    return True


def study_runs(spec: TrainingSpec, pins: Pins, runs: Iterable[Run]) -> list[Run]:
    """The runs of the spec's study, in the order given: same sizes, architecture, weight bits
    and sequence length as the resolved spec, and values matching the pins."""
    return [r for r in runs if same_spec(r.spec, spec) and matches_pins(r, spec, pins)]


def history(client: Client, spec: TrainingSpec, pins: Pins) -> History:
    """The exploit recommendation (which resolves the spec) and the study's runs, oldest first."""
    rec = client.recommend(spec, pins)
    runs = stored_runs_of(client, rec.spec)
    runs.reverse()  # ListRuns is newest first, in the order the runs were stored
    return History(rec, pins, study_runs(rec.spec, pins, runs))


def best_so_far(runs: list[Run]) -> list[float | None]:
    """After each run, the lowest final loss of the completed runs up to it (None before any)."""
    out, best = [], None
    for run in runs:
        if run.outcome.status is RunStatus.COMPLETED:
            best = run.outcome.final_loss if best is None else min(best, run.outcome.final_loss)
        out.append(best)
    return out


def describe_pins(pins: Pins) -> str:
    parts = []
    if pins.lr is not None:
        parts.append(f"lr {pins.lr:.3g}")
    if pins.batch_size_tokens is not None:
        parts.append(f"batch {format_quantity(pins.batch_size_tokens)}")
    if pins.weight_decay is not None:
        parts.append(f"weight decay {pins.weight_decay:.3g}")
    if pins.qat_fraction is not None:
        parts.append(f"QAT fraction {pins.qat_fraction:.3g}")
    return ", ".join(parts)


# Marker per kind of run, in both panels.
TRIAL_MARKER, OWN_MARKER = "o", "s"


def _marker(h: History, run: Run) -> str:
    return TRIAL_MARKER if h.is_trial(run) else OWN_MARKER


def draw(path: str, h: History) -> None:
    """Writes the figure (PNG, or any format matplotlib infers from the file name)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (losses, space) = plt.subplots(1, 2, figsize=(13, 5.5), dpi=120, layout="constrained")
    _draw_losses(losses, h)
    _draw_space(fig, space, h)
    pinned = describe_pins(h.pins)
    fig.suptitle(f"Refinement history: {h.rec.spec.describe()}, seq len {h.rec.spec.seq_len}"
                 + (f"; pinned: {pinned}" if pinned else "")
                 + f"\nmodels: {', '.join(h.rec.model_versions)}", fontsize=9)
    fig.savefig(path)
    plt.close(fig)


def _draw_losses(ax, h: History) -> None:
    """Final loss per run in report order; diverged on the top edge, failed on the bottom one."""
    from matplotlib.ticker import MaxNLocator

    order = {id(r): i for i, r in enumerate(h.runs, 1)}
    rec, band = h.rec, h.rec.predicted_loss_interval
    for trial, colour, label in ((True, "C0", "explore trials, completed"),
                                 (False, "C1", "your own runs, completed")):
        done = [r for r in h.with_status(RunStatus.COMPLETED) if h.is_trial(r) == trial]
        if done:
            ax.scatter([order[id(r)] for r in done], [r.outcome.final_loss for r in done],
                       marker=TRIAL_MARKER if trial else OWN_MARKER, s=50, c=colour,
                       edgecolors="black", linewidths=0.6, zorder=3, label=f"{label} ({len(done)})")
    edges = ((RunStatus.DIVERGED, 1.0, "red", "diverged, on the top edge"),
             (RunStatus.FAILED, 0.0, "0.6", "failed (no loss), on the bottom edge"))
    for status, y, colour, label in edges:
        runs = h.with_status(status)
        legend = f"{label} ({len(runs)})"
        for marker in (TRIAL_MARKER, OWN_MARKER):
            some = [r for r in runs if _marker(h, r) == marker]
            if some:  # x in data, y in axes coordinates: on the frame whatever the loss scale
                ax.scatter([order[id(r)] for r in some], [y] * len(some), marker=marker, s=50,
                           c=colour, edgecolors="black", linewidths=0.6, zorder=4, clip_on=False,
                           transform=ax.get_xaxis_transform(), label=legend)
                legend = None  # one legend entry for both kinds
    best = best_so_far(h.runs)
    steps = [(i, b) for i, b in enumerate(best, 1) if b is not None]
    if steps:
        xs, ys = zip(*steps)
        ax.step([*xs, len(h.runs) + 0.5], [*ys, ys[-1]], where="post", color="black", lw=1.2,
                label=f"best so far ({ys[-1]:.3f})")
    ax.axhspan(band.lo, band.hi, color="C2", alpha=0.15, lw=0, label="its 80% interval")
    ax.axhline(rec.predicted_loss, color="C2", ls="--", lw=1.5,
               label=f"exploit recommendation: predicted {rec.predicted_loss:.3f}")

    finite = [r.outcome.final_loss for r in h.with_status(RunStatus.COMPLETED)]
    low, high = min([band.lo, *finite]), max([band.hi, *finite])
    pad = 0.08 * (high - low) or 0.01 * high
    ax.set_ylim(low - pad, high + pad)
    ax.set_xlim(0.5, len(h.runs) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("run, in the order reported")
    ax.set_ylabel("final loss (nats/token)")
    ax.set_title("final loss of each run", fontsize=9)
    ax.legend(loc="best", fontsize=7, framealpha=0.9)


def _draw_space(fig, ax, h: History) -> None:
    """Where each run was, numbered and coloured by order; the exploit recommendation's star and
    its 80% intervals."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    rec = h.rec
    lrs = [r.hyperparameters.lr for r in h.runs]
    batches = [r.hyperparameters.batch_size_tokens for r in h.runs]
    norm, cmap = Normalize(1, max(len(h.runs), 2)), "viridis"
    ax.plot(lrs, batches, color="0.75", lw=0.8, zorder=1)  # the path in report order
    edges = {RunStatus.COMPLETED: ("black", 0.6, "solid", ""),
             RunStatus.DIVERGED: ("red", 1.6, "solid", ", diverged"),
             RunStatus.FAILED: ("0.5", 1.2, "dashed", ", failed")}
    for run_is_trial, label in ((True, "explore trials"), (False, "your own runs")):
        for status, (edge, width, style, says) in edges.items():
            some = [(i, r) for i, r in enumerate(h.runs, 1)
                    if h.is_trial(r) == run_is_trial and r.outcome.status is status]
            if some:
                ax.scatter([r.hyperparameters.lr for _, r in some],
                           [r.hyperparameters.batch_size_tokens for _, r in some],
                           c=[i for i, _ in some], cmap=cmap, norm=norm, s=70,
                           marker=TRIAL_MARKER if run_is_trial else OWN_MARKER, edgecolors=edge,
                           linewidths=width, linestyles=style, zorder=3,
                           label=f"{label}{says} ({len(some)})")
    numbers: dict[tuple[float, float], list[str]] = {}  # runs at one point share one label
    for i, point in enumerate(zip(lrs, batches), 1):
        numbers.setdefault(point, []).append(str(i))
    for point, labels in numbers.items():
        ax.annotate(", ".join(labels), point, xytext=(5, 4), textcoords="offset points",
                    fontsize=7)
    lo_lr, hi_lr = rec.lr_interval.lo, rec.lr_interval.hi
    lo_b, hi_b = rec.batch_size_tokens_interval.lo, rec.batch_size_tokens_interval.hi
    # Bars, not a box: a pinned value's interval has no width, and a box of no height is lost.
    ax.errorbar(rec.lr, rec.batch_size_tokens, color="black", lw=1.2, capsize=4, zorder=4,
                xerr=[[max(rec.lr - lo_lr, 0)], [max(hi_lr - rec.lr, 0)]],
                yerr=[[max(rec.batch_size_tokens - lo_b, 0)], [max(hi_b - rec.batch_size_tokens, 0)]],
                ls="none", label="its 80% intervals")
    ax.plot(rec.lr, rec.batch_size_tokens, marker="*", ms=16, mfc="white", mec="black", ls="none",
            zorder=5, label=f"exploit recommendation: lr {rec.lr:.3g}, batch "
                            f"{format_quantity(rec.batch_size_tokens)}")
    bar = fig.colorbar(ScalarMappable(norm, cmap), ax=ax)
    bar.set_label("run, in the order reported")
    bar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))

    xs, ys = [*lrs, lo_lr, hi_lr, rec.lr], [*batches, lo_b, hi_b, rec.batch_size_tokens]
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(min(xs) / 1.4, max(xs) * 1.4)
    ax.set_ylim(min(ys) / 1.4, max(ys) * 1.4)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: format_quantity(v)))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("batch size (tokens)")
    ax.set_title("where the runs were", fontsize=9)
    ax.legend(loc="best", fontsize=7, framealpha=0.9)
