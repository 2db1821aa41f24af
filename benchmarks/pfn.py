"""The PFN's figures -> docs/pfn.md (sections between markers, as benchmarks/report.py does).

    python -m benchmarks.pfn [--data PATH] [--tasks 300] [--no-write] [--skip-synthetic]

1. prior: statistics of the real dense sweep's groups next to those of prior samples drawn at
   the same (N, D) sizes with the prior's grid design (sweep_stats.group_stats on both);
2. latency: one forward pass with 500 context runs and 1,000 queries (torch threads 1 and 2);
3. synthetic backtest: leave-one-group-out regret and coverage of `prior` and `pfn` on sweeps
   sampled from the prior (wd fixed, Step Law-like grids at the real sizes): how well the
   network does on the data it was built for.
"""

import argparse
from pathlib import Path

import numpy as np

from benchmark_db.importers import read_runs
from benchmarks import report
from benchmarks.backtest import DEFAULT_DATA, score_backtest
from predictor.backtest import backtest
from predictor.pfn.features import law_point
from predictor.pfn.prior import PriorConfig, sample_task
from predictor.pfn.sweep_stats import group_stats, summarise
from predictor.table import RunTable

PFN_MD = report.ROOT / "docs" / "pfn.md"
STATS = ("divergence_rate", "best_gap", "lr2x_regret", "lr_half_regret", "completed_spread")


def real_groups(table: RunTable):
    ids = table.group_ids()
    return [table.subset(ids == g) for g in np.unique(ids)]


def best_offsets(lr, batch, loss, ok, n, d) -> tuple[float, float]:
    law = law_point(n, d, 16)
    j = np.flatnonzero(ok)[np.argmin(loss[ok])]
    return float(np.log(lr[j] / law.lr)), float(np.log(batch[j] / law.batch))


def prior_section(table: RunTable, n_tasks: int, seed: int) -> str:
    groups = real_groups(table)
    sizes = [(float(g.n_active_params[0]), float(g.n_tokens[0])) for g in groups]
    real = [group_stats(g.lr, g.batch_size_tokens, g.loss, g.diverged) for g in groups]
    real_opt = [best_offsets(g.lr, g.batch_size_tokens, g.loss, g.completed,
                             g.n_active_params[0], g.n_tokens[0]) for g in groups]
    rng = np.random.default_rng(seed)
    synth, synth_opt = [], []
    for _ in range(n_tasks):
        task = sample_task(rng, PriorConfig(), design="grid", sizes=sizes)
        for g in task.groups:
            r = g.runs
            synth.append(group_stats(r.lr, r.batch, r.loss, r.diverged))
            if r.completed.any():
                synth_opt.append(best_offsets(r.lr, r.batch, r.loss, r.completed, g.n_active, g.n_tokens))
    a, b = summarise(real), summarise(synth)
    lines = [
        "## The prior next to the real sweep", "",
        f"`python -m benchmarks.pfn`: {len(groups)} real groups (Step Law dense file) and "
        f"{n_tasks} prior tasks drawn at the same 17 (N, D) sizes with the prior's own grid "
        "design (not the real grid). Per group: share of diverged runs; best_gap, second-best "
        "minus best completed loss (nats); lr2x / lr_half regret, the run at 2x (1/2x) the best "
        "run's lr and the same batch over the best (diverged counts as its loss); "
        "completed_spread, worst completed over best - 1; best u / v, the best run's ln "
        "ratio to the law's lr / batch. Median [10th-90th percentile] across groups.", "",
        "| statistic | real | prior |", "|---|---|---|",
    ]
    fmt = lambda s: f"{s['median']:.4g} [{s['p10']:.3g}, {s['p90']:.3g}] (mean {s['mean']:.3g})"  # noqa: E731
    for key in STATS:
        lines.append(f"| {key} | {fmt(a[key])} | {fmt(b[key])} |")
    for k, name in ((0, "best u"), (1, "best v")):
        ra = np.array([o[k] for o in real_opt])
        sb = np.array([o[k] for o in synth_opt])
        lines.append(f"| {name} | {np.median(ra):.3g} [{np.percentile(ra, 10):.3g}, "
                     f"{np.percentile(ra, 90):.3g}] (sd {ra.std():.3g}) | {np.median(sb):.3g} "
                     f"[{np.percentile(sb, 10):.3g}, {np.percentile(sb, 90):.3g}] (sd {sb.std():.3g}) |")
    return "\n".join(lines)


def latency_section() -> str:
    import torch

    from predictor.pfn.predictor import load_checkpoint, timed_forward

    ck = load_checkpoint()
    rows = []
    before = torch.get_num_threads()
    for threads in (1, 2):
        torch.set_num_threads(threads)
        times = [timed_forward(ck) for _ in range(50)]
        t = 1000 * np.array(times[5:])
        rows.append(f"| {threads} | {np.median(t):.1f} ms | {np.percentile(t, 10):.1f} ms | "
                    f"{np.percentile(t, 90):.1f} ms |")
    torch.set_num_threads(before)
    load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"
    return "\n".join([
        "## Inference latency", "",
        f"One forward pass, 500 context runs and 1,000 queries, with the mean and both interval "
        f"quantiles ({report.machine()}; 1-minute load average {load} when measured: the "
        "machine is shared).", "",
        "| torch threads | median | p10 | p90 |", "|---|---|---|---|", *rows])


def synthetic_section(n_tasks: int, seed: int, sizes) -> str:
    from predictor.table import RunTable as T

    rng = np.random.default_rng(seed)
    res = {k: {"regret": [], "coverage": [], "width": [], "spearman": []} for k in ("prior", "pfn")}
    for _ in range(n_tasks):
        while True:
            task = sample_task(rng, PriorConfig(), design="grid", sizes=sizes)
            if task.wd_mode[0] == "fixed":
                break
        parts = []
        for g in task.groups:
            r, n = g.runs, len(g.runs)
            parts.append(T(n_params=r.n_params, n_active_params=r.n_active, n_tokens=r.n_tokens,
                           seq_len=np.full(n, 2048.0), weight_bits=r.bits, lr=r.lr,
                           batch_size_tokens=r.batch, weight_decay=r.weight_decay,
                           qat_fraction=r.qat, loss=r.loss, diverged=r.diverged))
        table = T.concat(parts)
        for kind in res:
            per_group = score_backtest(table, backtest(table, kind))
            for key in res[kind]:
                res[kind][key] += per_group[key]
    lines = ["## Backtest on sweeps drawn from the prior", "",
             f"`python -m benchmarks.pfn`: {n_tasks} tasks of {len(sizes)} groups (the real "
             "sweep's sizes, every other one), prior grid designs, weight decay fixed; "
             "leave-one-group-out exactly as on the real data.", "",
             "| predictor | mean regret | median | 80% coverage | width | Spearman |",
             "|---|---|---|---|---|---|"]
    for kind, v in res.items():
        lines.append(f"| {kind} | {100 * np.mean(v['regret']):.3f}% | {100 * np.median(v['regret']):.3f}% | "
                     f"{np.mean(v['coverage']):.1%} | {np.mean(v['width']):.2%} | "
                     f"{np.nanmean(v['spearman']):.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--tasks", type=int, default=300, help="prior tasks for the comparison")
    parser.add_argument("--synthetic-tasks", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()

    table = RunTable.from_runs(read_runs(args.data, "steplaw"))
    sections = {"pfn-prior": prior_section(table, args.tasks, args.seed),
                "pfn-latency": latency_section()}
    if not args.skip_synthetic:
        sizes = [(float(g.n_active_params[0]), float(g.n_tokens[0])) for g in real_groups(table)][::2]
        sections["pfn-synthetic"] = synthetic_section(args.synthetic_tasks, args.seed + 1, sizes)
    for name, markdown in sections.items():
        print(markdown + "\n", flush=True)
        if not args.no_write:
            report.write_section(name, markdown, path=PFN_MD)


if __name__ == "__main__":
    main()
