"""Human-readable output of the CLI (rich tables)."""

from datetime import UTC

from rich.console import Console
from rich.table import Table

from clients.units import format_quantity
from hparamrec.v1 import recommender_pb2 as pb

console = Console()

_ROWS = (
    ("lr", "learning rate", "{:.3g}"),
    ("batch_size_tokens", "batch size (tokens)", None),
    ("weight_decay", "weight decay", "{:.3g}"),
    ("qat_fraction", "QAT fraction", "{:.2f}"),
    ("predicted_loss", "predicted loss", "{:.3f}"),
)


def _fmt(value: float, pattern: str | None) -> str:
    return format_quantity(value) if pattern is None else pattern.format(value)


def recommendation(rec: pb.Recommendation) -> None:
    s = rec.spec
    title = (f"{format_quantity(s.n_params)} params, {format_quantity(s.n_tokens)} tokens, "
             f"{s.compute_flops:.3g} FLOPs, {s.weight_bits}-bit weights")
    table = Table(title=title, title_justify="left")
    for column in ("", "value", "80% interval", "source"):
        table.add_column(column)
    sources: dict[str, list[str]] = {}
    for src in rec.sources:
        sources.setdefault(src.field, []).append(src.name)
    for field, label, pattern in _ROWS:
        interval = getattr(rec, f"{field}_interval")
        value = _fmt(getattr(rec, field), pattern)
        if field == "batch_size_tokens":
            value += f" ({rec.batch_size_sequences} x {s.seq_len})"
        table.add_row(label, value,
                      f"{_fmt(interval.lo, pattern)} to {_fmt(interval.hi, pattern)}",
                      ", ".join(sources.get(field, [])))
    console.print(table)
    for warning in rec.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    console.print(f"models: {', '.join(rec.model_versions)}; recommendation id {rec.recommendation_id}")


def _status(run: pb.Run) -> str:
    name = pb.RunStatus.Name(run.outcome.status).removeprefix("RUN_STATUS_").lower()
    if run.outcome.HasField("final_loss"):
        return f"{name} {run.outcome.final_loss:.4f}"
    return name


def runs_table(runs: list[pb.Run]) -> None:
    table = Table()
    for column in ("run_id", "params", "tokens", "lr", "batch", "wd", "outcome", "created"):
        table.add_column(column)
    for run in runs:
        hp = run.hyperparameters
        table.add_row(run.run_id, format_quantity(run.spec.n_params),
                      format_quantity(run.spec.n_tokens), f"{hp.lr:.3g}",
                      format_quantity(hp.batch_size_tokens), f"{hp.weight_decay:.3g}",
                      _status(run), run.created_at.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M"))
    console.print(table)
    if not runs:
        console.print("no runs stored")


def run_detail(run: pb.Run) -> None:
    runs_table([run])
    for key, value in sorted(run.metadata.items()):
        console.print(f"  {key} = {value}")


def backtest_table(table, result: dict) -> None:
    """One row per held-out group, with the regret of the recommendation on its own sweep."""
    import numpy as np

    from predictor import scoring

    ids = table.group_ids()
    out = Table(title=f"leave-one-group-out backtest, predictor {result['predictor']}",
                title_justify="left")
    for column in ("params", "tokens", "lr", "batch", "regret", "rank corr.", "80% cover"):
        out.add_column(column)
    regrets = []
    for g, group in zip(np.unique(ids), result["groups"]):
        held = table.subset(ids == g)
        rec = group["recommendation"]
        pts = group["points"]
        mean = np.array([p["loss_pred"] for p in pts])
        lo, hi = np.array([p["loss_lo"] for p in pts]), np.array([p["loss_hi"] for p in pts])
        regret = scoring.regret(held, rec["lr"], rec["batch_size_tokens"])
        regrets.append(regret)
        out.add_row(format_quantity(group["n_params"]), format_quantity(group["n_tokens"]),
                    f"{rec['lr']:.3g}", format_quantity(rec["batch_size_tokens"]),
                    f"{100 * regret:.3f}%", f"{scoring.rank_correlation(held, mean):.3f}",
                    f"{scoring.coverage(held, lo, hi):.0%}")
    console.print(out)
    console.print(f"mean regret {100 * np.mean(regrets):.3f}%, median {100 * np.median(regrets):.3f}%")
