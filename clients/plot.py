"""`hparamrec plot`: the predicted loss over learning rate x batch size for a spec, with the
recommendation, its 80% interval and the stored runs of that spec marked.

The landscape comes from `loss_grid`, the one function that talks to the service for it (the
PredictLoss RPC, or a grid of Recommend calls with lr and batch pinned on servers without it).
matplotlib (Agg backend) and numpy are imported only when a figure is drawn.
"""

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from clients.client import Client
from clients.errors import UnimplementedError
from clients.models import (Hyperparameters, Pins, Recommendation, Run, RunStatus,
                            TrainingSpec)
from clients.units import format_quantity

# Default span of the axes around the recommendation (factor either way), before widening to
# include its interval and the stored runs.
LR_SPAN = 10.0
BATCH_SPAN = 8.0
# Contour levels: the loss this far above the landscape's minimum (relative).
EXCESS_LEVELS = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)


@dataclass(frozen=True)
class Landscape:
    lrs: list[float]
    batches: list[float]
    losses: list[list[float]]  # losses[i][j] at batches[i], lrs[j]
    how: str  # what the grid holds, for the figure's subtitle


def log_axis(lo: float, hi: float, points: int) -> list[float]:
    """`points` log-spaced values from lo to hi. The ends are lo and hi exactly: exp(log(x))
    rounds, and an end a hair past a cap (lr 10, the spec's tokens) is refused by the service."""
    if points == 1 or lo == hi:
        return [math.sqrt(lo * hi)] * max(points, 1)
    step = (math.log(hi) - math.log(lo)) / (points - 1)
    inner = [math.exp(math.log(lo) + i * step) for i in range(1, points - 1)]
    return [lo, *(min(max(v, lo), hi) for v in inner), hi]


def axes(rec: Recommendation, runs: list[Run], points: int) -> tuple[list[float], list[float]]:
    """Log-spaced lr and batch axes around the recommendation, covering its interval and the
    runs (with a margin), within what the service accepts."""
    lrs = [rec.lr / LR_SPAN, rec.lr * LR_SPAN, rec.lr_interval.lo, rec.lr_interval.hi]
    batches = [rec.batch_size_tokens / BATCH_SPAN, rec.batch_size_tokens * BATCH_SPAN,
               rec.batch_size_tokens_interval.lo, rec.batch_size_tokens_interval.hi]
    lrs += [r.hyperparameters.lr for r in runs]
    batches += [r.hyperparameters.batch_size_tokens for r in runs]
    lr_lo, lr_hi = min(lrs) / 1.25, min(max(lrs) * 1.25, 10.0)
    b_lo = max(min(batches) / 1.25, float(rec.spec.seq_len or 1))
    b_hi = min(max(batches) * 1.25, rec.spec.n_tokens)
    return log_axis(lr_lo, lr_hi, points), log_axis(b_lo, b_hi, points)


def loss_grid(client: Client, spec: TrainingSpec, lrs: list[float], batches: list[float],
              pins: Pins) -> Landscape:
    """The predicted loss at every (batch, lr) of the grid, in one PredictLoss call. Pinned
    weight decay / QAT fraction hold at every point; otherwise the service fills them in."""
    points = [Hyperparameters(lr=lr, batch_size_tokens=b, weight_decay=pins.weight_decay,
                              qat_fraction=pins.qat_fraction) for b in batches for lr in lrs]
    try:
        predictions = client.predict_loss(spec, points).predictions
    except UnimplementedError:  # a server from before PredictLoss
        return _loss_grid_by_recommend(client, spec, lrs, batches, pins)
    losses = [p.loss for p in predictions]
    how = ("weight decay " + (f"pinned at {pins.weight_decay:.3g}" if pins.weight_decay is not None
                              else "from the timescale rule at each point"))
    return Landscape(lrs, batches, _rows(losses, len(lrs)), how)


def _loss_grid_by_recommend(client: Client, spec: TrainingSpec, lrs: list[float],
                            batches: list[float], pins: Pins) -> Landscape:
    """One Recommend per point, lr and batch pinned (its predicted loss is the loss there)."""
    from concurrent.futures import ThreadPoolExecutor

    def at(point: tuple[float, float]) -> float:
        b, lr = point
        pinned = pins.model_copy(update={"lr": lr, "batch_size_tokens": b})
        return client.recommend(spec, pinned).predicted_loss

    with ThreadPoolExecutor(max_workers=8) as pool:
        losses = list(pool.map(at, [(b, lr) for b in batches for lr in lrs]))
    how = ("weight decay " + (f"pinned at {pins.weight_decay:.3g}" if pins.weight_decay is not None
                              else "at its conditional optimum at each point"))
    return Landscape(lrs, batches, _rows(losses, len(lrs)), how)


def _rows(values: list[float], width: int) -> list[list[float]]:
    return [values[i:i + width] for i in range(0, len(values), width)]


def same_spec(a: TrainingSpec, b: TrainingSpec, rel: float = 1e-6) -> bool:
    """The same model and data (sizes within rel; architecture, weight bits and sequence
    length equal)."""
    def close(x, y):
        return x is not None and y is not None and abs(x - y) <= rel * max(abs(x), abs(y))

    return (close(a.n_params, b.n_params) and close(a.n_active_params, b.n_active_params)
            and close(a.n_tokens, b.n_tokens) and a.architecture == b.architecture
            and a.weight_bits == b.weight_bits and a.seq_len == b.seq_len)


def runs_of(spec: TrainingSpec, runs: Iterable[Run]) -> list[Run]:
    return [run for run in runs if same_spec(run.spec, spec)]


def stored_runs_of(client: Client, spec: TrainingSpec) -> list[Run]:
    """The stored runs of a resolved spec, newest first: the server filters them (ListRuns'
    spec), and they are filtered here again, for servers from before that filter, which
    ignore it and return every run."""
    wanted = spec.model_copy(update={"compute_flops": None})  # the sizes say it all
    return runs_of(spec, client.iter_runs(page_size=1000, spec=wanted))


def landscape(client: Client, spec: TrainingSpec, pins: Pins, points: int = 25,
              progress: Callable[[str], None] | None = None
              ) -> tuple[Recommendation, list[Run], Landscape]:
    """The recommendation, the stored runs of its spec and the loss grid around them."""
    say = progress or (lambda message: None)
    rec = client.recommend(spec, pins)
    say("reading stored runs")
    runs = stored_runs_of(client, rec.spec)
    lrs, batches = axes(rec, runs, points)
    say(f"predicting the loss at {points} x {points} points")
    return rec, runs, loss_grid(client, rec.spec, lrs, batches, pins)


def marked_runs(runs: list[Run]) -> tuple[list[Run], list[Run]]:
    """(completed runs, diverged runs): the runs the figure marks. A failed run stopped for
    reasons unrelated to its hyperparameters, so it has nothing to show there."""
    finished = [r for r in runs if r.outcome.final_loss is not None
                and r.outcome.status is RunStatus.COMPLETED]
    return finished, [r for r in runs if r.outcome.status is RunStatus.DIVERGED]


def figure_path(path: str) -> str:
    """The file matplotlib will write for `path`: its extension must name a format matplotlib
    writes (ValueError, listing them, otherwise); with none it adds its default (l -> l.png)."""
    import os

    import matplotlib
    from matplotlib.backend_bases import FigureCanvasBase

    extension = os.path.splitext(path)[1][1:].lower()
    if not extension:  # as matplotlib's savefig names the file
        return path.rstrip(".") + "." + matplotlib.rcParams["savefig.format"]
    supported = sorted(FigureCanvasBase.get_supported_filetypes())
    if extension not in supported:
        raise ValueError(f"unsupported image format {extension!r}: use one of "
                         f"{', '.join(supported)}")
    return path


def draw(path: str, rec: Recommendation, runs: list[Run], grid: Landscape) -> None:
    """Writes the figure (PNG, or any format matplotlib infers from the file name)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import BoundaryNorm
    from matplotlib.patches import Rectangle
    from matplotlib.ticker import FuncFormatter

    lrs, batches, losses = np.array(grid.lrs), np.array(grid.batches), np.array(grid.losses)
    best = float(np.nanmin(losses))
    levels = [best * (1 + e) for e in EXCESS_LEVELS]
    cmap = plt.get_cmap("viridis_r")
    norm = BoundaryNorm(levels, cmap.N, extend="max")

    fig, ax = plt.subplots(figsize=(8, 6), dpi=120, layout="constrained")
    filled = ax.contourf(lrs, batches, losses, levels=levels, cmap=cmap, norm=norm, extend="max")
    lines = ax.contour(lrs, batches, losses, levels=levels[1:], colors="white", linewidths=0.6,
                       alpha=0.8)
    ax.clabel(lines, fmt={lv: f"+{e:.1%}".replace(".0%", "%") for lv, e in
                          zip(levels[1:], EXCESS_LEVELS[1:])}, fontsize=7)
    bar = fig.colorbar(filled, ax=ax)
    bar.set_label("predicted final loss (nats/token)")
    bar.ax.set_yticks(levels, [f"{lv:.3f}" for lv in levels])

    lo_lr, hi_lr = rec.lr_interval.lo, rec.lr_interval.hi
    lo_b, hi_b = rec.batch_size_tokens_interval.lo, rec.batch_size_tokens_interval.hi
    ax.add_patch(Rectangle((lo_lr, lo_b), hi_lr - lo_lr, hi_b - lo_b, fill=False, ls="--",
                           lw=1.5, ec="black", label="80% interval"))
    ax.plot(rec.lr, rec.batch_size_tokens, marker="*", ms=18, mfc="white", mec="black",
            ls="none", label=f"recommended: lr {rec.lr:.3g}, batch "
                             f"{format_quantity(rec.batch_size_tokens)}, "
                             f"loss {rec.predicted_loss:.3f}")
    finished, diverged = marked_runs(runs)
    if finished:
        ax.scatter([r.hyperparameters.lr for r in finished],
                   [r.hyperparameters.batch_size_tokens for r in finished],
                   c=[r.outcome.final_loss for r in finished], cmap=cmap, norm=norm, s=45,
                   edgecolors="black", linewidths=0.8, zorder=3,
                   label=f"stored runs ({len(finished)}), coloured by final loss")
    if diverged:
        ax.scatter([r.hyperparameters.lr for r in diverged],
                   [r.hyperparameters.batch_size_tokens for r in diverged], marker="x", s=50,
                   c="red", zorder=3, label=f"diverged runs ({len(diverged)})")

    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lrs[0], lrs[-1])
    ax.set_ylim(batches[0], batches[-1])
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: format_quantity(v)))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("batch size (tokens)")
    ax.set_title(f"Predicted loss: {rec.spec.describe()}, seq len {rec.spec.seq_len}\n"
                 f"{grid.how}\nmodels: {', '.join(rec.model_versions)}", fontsize=9)
    ax.legend(loc="lower left", fontsize=8, framealpha=0.9)
    fig.savefig(path)
    plt.close(fig)
