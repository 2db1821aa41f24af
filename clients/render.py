"""Human-readable output of the CLI (rich tables), from the client's typed models."""

import math
import os
import statistics
import sys
from collections import Counter
from datetime import UTC

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from clients.models import RECOMMENDED_FIELDS, Recommendation, Run, RunStatus, Source
from clients.units import format_quantity

# A pipe has no width: Rich would take 80 columns and wrap source names mid-word there.
PIPE_WIDTH = 160
console = Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else PIPE_WIDTH)

LABELS = {
    "lr": "learning rate",
    "batch_size_tokens": "batch (tokens)",
    "weight_decay": "weight decay",
    "qat_fraction": "QAT fraction",
    "predicted_loss": "predicted loss",
}
PROSE = LABELS | {"batch_size_tokens": "batch size"}
_FORMATS = {"lr": "{:.3g}", "batch_size_tokens": None, "weight_decay": "{:.3g}",
            "qat_fraction": "{:.2f}", "predicted_loss": "{:.3f}"}
PINNED = "pinned"
SOURCE_MIN_WIDTH = 10  # characters of a source name worth a column


def _fmt(field: str, value: float) -> str:
    pattern = _FORMATS[field]
    return format_quantity(value) if pattern is None else pattern.format(value)


def explanation(rec: Recommendation) -> str:
    """One line on why: the law or model behind most of the recommended values, with its own
    detail (what it was fitted on, or its formula and source), and what the caller pinned."""
    by_field: dict[str, list[Source]] = {}
    for src in rec.sources:
        by_field.setdefault(src.field, []).append(src)
    pinned = [f for f in RECOMMENDED_FIELDS
              if any(s.name == PINNED for s in by_field.get(f, []))]
    free = {f: [s for s in by_field.get(f, []) if s.name != PINNED] for f in RECOMMENDED_FIELDS}
    producers = [free[f][0].name for f in RECOMMENDED_FIELDS if free[f]]
    if not producers:
        return "why: every value was pinned by the caller"
    # The one behind the most values; among equals, the one behind the earliest (lr first).
    counts = Counter(producers)
    name = max(dict.fromkeys(producers), key=counts.__getitem__)
    fields = [f for f in RECOMMENDED_FIELDS if free[f][:1] and free[f][0].name == name]
    source = free[fields[0]][0]
    line = f"why: {_join([PROSE[f] for f in fields])} from {name}: {source.detail}"
    rest = [f for f in RECOMMENDED_FIELDS if free[f] and f not in fields]
    if rest:
        line += f"; {_join([PROSE[f] for f in rest])} from other sources (--explain)"
    if pinned:
        line += f"; pinned: {_join([PROSE[f] for f in pinned])}"
    if rec.model_versions and all(v.startswith("prior@") for v in rec.model_versions):
        line += f"; published laws only ({', '.join(rec.model_versions)}): no model learned " \
                "from your runs yet"
    return line


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def recommendation(rec: Recommendation, explain: bool = False) -> None:
    rows = []
    for field in RECOMMENDED_FIELDS:
        interval = rec.interval(field)
        value = _fmt(field, getattr(rec, field))
        if field == "batch_size_tokens":
            value += f" ({rec.batch_size_sequences} x {rec.spec.seq_len})"
        rows.append((LABELS[field], value, f"{_fmt(field, interval.lo)} - {_fmt(field, interval.hi)}",
                     "\n".join(escape(s.name) for s in rec.sources_for(field))))
    # A trial's values are what to run next, not the best estimate; its intervals still say
    # where the optimum is believed to be, so they need not hold the trial's values.
    headers = ("", "trial", "optimum's 80% interval") if rec.trial_id else ("", "value", "80% interval")
    title = rec.spec.describe() + f", seq len {rec.spec.seq_len}"
    # Numbers are never cut short. Source names too long for the screen end in an ellipsis, and
    # are left out where not even SOURCE_MIN_WIDTH of them fits (folded, they ran down a narrow
    # screen a few letters a line); the why line and --explain name them in full.
    numbers = _values_table(title, headers, [row[:-1] for row in rows])
    unbounded = console.options.update_width(1 << 16)
    room = console.width - Measurement.get(console, unbounded, numbers).maximum - 3  # padding
    table = (_values_table(title, (*headers, "source"), rows, source_width=room)
             if room >= SOURCE_MIN_WIDTH else numbers)
    console.print(table)
    for warning in rec.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}", soft_wrap=True)
    console.print(escape(explanation(rec)), highlight=False, soft_wrap=True)
    if explain:
        _details(rec)


def _values_table(title: str, headers: tuple[str, ...], rows: list[tuple[str, ...]],
                  source_width: int | None = None) -> Table:
    """The recommendation's values and intervals, never cut short; with source_width, its
    last column the source names, cut to that width."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for k, header in enumerate(headers[:len(headers) - (source_width is not None)]):
        table.add_column(header, no_wrap=True, min_width=max(len(row[k]) for row in rows))
    if source_width is not None:
        table.add_column(headers[-1], no_wrap=True, overflow="ellipsis", max_width=source_width)
    for row in rows:
        table.add_row(*row)
    return table


def _details(rec: Recommendation) -> None:
    console.print("sources:")
    for src in rec.sources:
        version = f" ({src.version})" if src.version else ""
        console.print(f"  {PROSE.get(src.field, src.field)}: {escape(src.name)}{escape(version)}: "
                      f"{escape(src.detail)}", highlight=False, soft_wrap=True)
    s = rec.spec
    console.print(f"spec as resolved: n_params {s.n_params:.6g}, n_active_params "
                  f"{s.n_active_params:.6g}, n_tokens {s.n_tokens:.6g}, compute_flops "
                  f"{s.compute_flops:.6g}, seq_len {s.seq_len}, {s.architecture}, {s.optimizer}, "
                  f"{s.weight_bits}-bit weights", highlight=False, soft_wrap=True)
    console.print(f"model versions: {', '.join(rec.model_versions)}", highlight=False)
    console.print(f"recommendation id: {rec.recommendation_id} (pass it to `hparamrec report "
                  "--recommendation-id`)", highlight=False, soft_wrap=True)


def status(run: Run) -> str:
    text = run.outcome.status.value
    if run.outcome.final_loss is not None:
        return f"{text} {run.outcome.final_loss:.4f}"
    return text


def runs_table(runs: list[Run]) -> None:
    rows = []
    for run in runs:
        hp = run.hyperparameters
        wd = "" if hp.weight_decay is None else f"{hp.weight_decay:.3g}"
        rows.append((run.run_id, format_quantity(run.spec.n_params),
                     format_quantity(run.spec.n_tokens), f"{hp.lr:.3g}",
                     format_quantity(hp.batch_size_tokens), wd, status(run), _created(run)))
    if not runs:
        console.print("no runs stored")
        return
    headers = ("run_id", "params", "tokens", "lr", "batch", "wd", "outcome", "created")
    # A run id is never cut short, even in 80 columns or a pipe: it is what `runs show` takes.
    # No other value is cut either: the outcome and the time wrap between words, then columns
    # are left out, least useful first, until the rest fit (`runs show` has every field).
    wrapping = ("outcome", "created")
    natural = {h: max(len(v) for v in [h, *(row[k] for row in rows)]) for k, h in enumerate(headers)}
    least = {h: max(len(w) for v in [h, *(row[k] for row in rows)] for w in v.split())
             if h in wrapping else natural[h] for k, h in enumerate(headers)}

    def width(widths, shown):  # each column has 1 space of padding and a 1-space divider
        return sum(widths[h] + 2 for h in shown) - 1

    if not console.is_terminal and "COLUMNS" not in os.environ:
        # Into a pipe or a file: one line per run with every column, for grep and cut, rather
        # than the 80 columns rich assumes there.
        wide = Console(file=console.file, width=width(natural, headers) + 1, no_color=True)
        wide.print(_runs_table_of(runs, rows, headers, natural, headers))
        return
    shown = list(headers)
    for dropped in ("created", "wd", "batch", "tokens", "params", "lr", "outcome"):
        if width(least, shown) <= console.width:
            break
        shown.remove(dropped)
    widths = dict(least)
    for h in wrapping:  # what room there is goes to the outcome first
        if h in shown:
            widths[h] = min(natural[h], widths[h] + max(console.width - width(widths, shown), 0))
    if shown == ["run_id"]:
        widths["run_id"] = min(natural["run_id"], console.width - 1)  # it folds, never cut
    console.print(_runs_table_of(runs, rows, headers, widths, shown))


def _runs_table_of(runs, rows, headers, widths, shown) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0))
    for header in shown:
        table.add_column(header, width=widths[header], overflow="fold")
    for run, row in zip(runs, rows):
        style = "red" if run.outcome.status is RunStatus.DIVERGED else None
        table.add_row(*(escape(v) for h, v in zip(headers, row) if h in shown), style=style)
    return table


def _created(run: Run) -> str:
    return run.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if run.created_at else ""


def _optional(value, pattern: str = "{}") -> str:
    return "not given" if value is None else pattern.format(value)


def run_detail(run: Run) -> None:
    """Every field of the run, one per line (a 4-bit QAT run must not read as a dense 16-bit
    one): the spec, the hyperparameters, the outcome, where it came from and its labels."""
    s, hp = run.spec, run.hyperparameters
    active = "" if s.n_active_params is None else format_quantity(s.n_active_params)
    lines = {
        "run_id": run.run_id,
        "params": _optional(s.n_params and format_quantity(s.n_params)),
        "active params": active + (" (moe)" if s.architecture == "moe" else ""),
        "tokens": _optional(s.n_tokens and format_quantity(s.n_tokens)),
        "compute": _optional(s.compute_flops, "{:.3g} FLOPs"),
        "seq len": _optional(s.seq_len),
        "architecture": s.architecture,
        "optimizer": s.optimizer,
        "weight bits": _optional(s.weight_bits),
        "learning rate": f"{hp.lr:.6g}",
        "batch (tokens)": format_quantity(hp.batch_size_tokens),
        "weight decay": _optional(hp.weight_decay, "{:.6g}"),
        "QAT fraction": _optional(hp.qat_fraction, "{:.6g}"),
        "outcome": status(run),
        "created": _created(run),
        "source": run.source,
        "recommendation_id": run.recommendation_id,
        "trial_id": run.trial_id,
    }
    width = max(map(len, lines))
    for key, value in lines.items():
        if value:
            console.print(f"{key:<{width}}  {escape(str(value))}", highlight=False, soft_wrap=True)
    if run.metadata:
        console.print("labels:", highlight=False)
    for key, value in sorted(run.metadata.items()):
        console.print(f"  {escape(key)} = {escape(value)}", highlight=False, soft_wrap=True)


def backtest_table(table, result: dict) -> None:
    """One row per held-out group, with the regret of the recommendation on its own sweep."""
    import numpy as np

    from predictor import scoring

    ids = table.group_ids()
    out = Table(title=f"leave-one-group-out backtest, predictor {result['predictor']}",
                title_justify="left")
    for column in ("params", "tokens", "lr", "batch", "regret", "rank corr.", "80% cover"):
        out.add_column(column)
    regrets, unscored = [], {"without a completed run": 0, "of one configuration": 0}
    for g, group in zip(np.unique(ids), result["groups"]):
        held = table.subset(ids == g)
        rec = group["recommendation"]
        configurations = {(lr, b) for lr, b in zip(held.lr[held.completed],
                                                   held.batch_size_tokens[held.completed])}
        if len(configurations) < 2:  # no best loss, or every recommendation is nearest to it
            why = "without a completed run" if not configurations else "of one configuration"
            unscored[why] += 1
            out.add_row(format_quantity(group["n_params"]), format_quantity(group["n_tokens"]),
                        f"{rec['lr']:.3g}", format_quantity(rec["batch_size_tokens"]),
                        "n/a: " + ("no completed run" if not configurations
                                   else "one configuration"), "", "")
            continue
        pts = group["points"]
        mean = np.array([p["loss_pred"] for p in pts])
        lo, hi = np.array([p["loss_lo"] for p in pts]), np.array([p["loss_hi"] for p in pts])
        regret = scoring.regret(held, rec["lr"], rec["batch_size_tokens"])
        regrets.append(regret)
        into_diverged = held.diverged[scoring.nearest_point(held, rec["lr"], rec["batch_size_tokens"])]
        out.add_row(format_quantity(group["n_params"]), format_quantity(group["n_tokens"]),
                    f"{rec['lr']:.3g}", format_quantity(rec["batch_size_tokens"]),
                    _regret_cell(regret, into_diverged),
                    f"{scoring.rank_correlation(held, mean):.3f}",
                    f"{scoring.coverage(held, lo, hi):.0%}")
    console.print(out)
    console.print(_regret_summary(regrets) + "".join(
        f"; {count} group(s) {why} not scored" for why, count in unscored.items() if count))


def _regret_cell(regret: float, into_diverged: bool) -> str:
    """A diverged run with no loss has no finite regret (scoring makes it inf): say what
    happened. One that kept its loss costs what it cost, and is marked."""
    if not math.isfinite(regret):
        return "diverged"
    return f"{100 * regret:.3f}%" + (" (diverged)" if into_diverged else "")


def _regret_summary(regrets: list[float]) -> str:
    """Mean and median over the finite regrets: one inf would make them inf and hide the rest;
    the groups left out are counted instead."""
    finite = [r for r in regrets if math.isfinite(r)]
    lost = len(regrets) - len(finite)
    text = (f"mean regret {100 * statistics.mean(finite):.3f}%, "
            f"median {100 * statistics.median(finite):.3f}%"
            if finite else "no group has a finite regret")
    if lost:
        if finite:
            text += f" over the {len(finite)} of {len(regrets)} groups with a finite regret"
        text += f"; {lost} recommended into a diverged run with no loss"
    return text
