"""Trains the PFN on tasks sampled from the prior: `make pfn`, or

    python -m predictor.pfn.train [--out PATH] [--steps N] [--threads T] [--seed S]

Seeded and reproducible (for a given torch build and thread count): the same config gives the
same synthetic data, and the checkpoint records the config and its data hash. Examples are
drawn in blocks of several steps and sorted by context length so that a step pads little.
"""

import argparse
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from predictor.pfn import checkpoint
from predictor.pfn.bar import borders_from_samples
from predictor.pfn.config import ModelConfig, PFNConfig, TrainConfig
from predictor.pfn.episodes import collate, make_example
from predictor.pfn.features import CONTEXT_FEATURES, QUERY_FEATURES
from predictor.pfn.model import build_model
from predictor.pfn.prior import PriorConfig

STEPS_PER_BLOCK = 16
VALIDATION_TASKS = 256


def default_config() -> PFNConfig:
    return PFNConfig(model=ModelConfig(n_context_features=len(CONTEXT_FEATURES),
                                       n_query_features=len(QUERY_FEATURES)),
                     train=TrainConfig(), prior=PriorConfig())


def _examples(rng, cfg: PFNConfig, n: int):
    t = cfg.train
    return [make_example(rng, cfg.prior, t.queries_per_task, t.max_context) for _ in range(n)]


def _tensors(batch):
    return [torch.from_numpy(a) for a in collate(batch)]


def evaluate(model, examples) -> dict[str, float]:
    """NLL, mean absolute error of the mean, and 80% coverage on non-diverged targets
    (y < 0.4: below 1.5x the best loss) of held-out synthetic tasks."""
    model.eval()
    nll, err, cover, count = 0.0, 0.0, 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), 16):
            ctx, mask, qry, y = _tensors(examples[i:i + 16])
            logits = model(ctx, qry, mask)
            nll += model.bar.nll(logits, y).sum().item()
            ok = y < 0.4
            mean = model.bar.mean(logits)
            lo, hi = model.bar.quantile(logits, 0.1), model.bar.quantile(logits, 0.9)
            err += (mean - y.double()).abs()[ok].sum().item()
            cover += ((y.double() >= lo) & (y.double() <= hi))[ok].sum().item()
            count += ok.sum().item()
    model.train()
    n = sum(len(e.y) for e in examples)
    return {"nll": nll / n, "mae_converged": err / count, "coverage80_converged": cover / count}


def train(cfg: PFNConfig, out: Path, log=print) -> dict:
    t = cfg.train
    torch.set_num_threads(t.threads)
    torch.manual_seed(t.seed)
    started = time.perf_counter()
    border_rng = np.random.default_rng([t.seed, 1])
    ys = np.concatenate([e.y for e in _examples(border_rng, cfg, t.border_tasks)])
    borders = torch.tensor(borders_from_samples(ys, cfg.model.n_buckets))
    validation = _examples(np.random.default_rng([t.seed, 2]), cfg, VALIDATION_TASKS)
    model = build_model(cfg.model, borders)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)

    def lr_at(step: int) -> float:
        if step < t.warmup_steps:
            return t.lr * (step + 1) / t.warmup_steps
        progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
        return t.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))

    rng = np.random.default_rng([t.seed, 0])
    log(f"training {sum(p.numel() for p in model.parameters())} parameters for {t.steps} steps "
        f"of {t.tasks_per_step} tasks on {t.threads} threads; data hash {cfg.data_hash()}")
    running, step, stopped_early = [], 0, False
    deadline = started + 60 * t.max_minutes
    while step < t.steps:
        block = _examples(rng, cfg, STEPS_PER_BLOCK * t.tasks_per_step)
        block.sort(key=lambda e: len(e.context))
        for k in range(STEPS_PER_BLOCK):
            if step >= t.steps:
                break
            ctx, mask, qry, y = _tensors(block[k * t.tasks_per_step:(k + 1) * t.tasks_per_step])
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            loss = model.bar.nll(model(ctx, qry, mask), y).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            opt.step()
            running.append(loss.item())
            step += 1
            if step % 100 == 0:
                log(f"step {step} nll {np.mean(running[-100:]):.4f} "
                    f"{(time.perf_counter() - started) / 60:.1f} min")
        if time.perf_counter() > deadline:
            stopped_early = True
            log(f"stopping at step {step}: the {t.max_minutes} minute limit")
            break
    train_seconds = time.perf_counter() - started
    metrics = evaluate(model, validation)
    log(f"validation {metrics}; {train_seconds / 60:.1f} min")
    model.eval()
    meta = checkpoint.save(model, cfg, out, extra={
        "steps_done": step, "stopped_early": stopped_early,
        "train_seconds": round(train_seconds, 1), "threads": t.threads,
        "torch": torch.__version__, "final_train_nll": round(float(np.mean(running[-200:])), 4),
        **{f"validation_{k}": round(v, 5) for k, v in metrics.items()},
    })
    return meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=checkpoint.DEFAULT_CHECKPOINT)
    parser.add_argument("--steps", type=int, help="override the config's step count")
    parser.add_argument("--threads", type=int, help="override the config's thread count")
    parser.add_argument("--seed", type=int, help="override the config's seed")
    args = parser.parse_args()
    cfg = default_config()
    overrides = {k: v for k, v in (("steps", args.steps), ("threads", args.threads),
                                   ("seed", args.seed)) if v is not None}
    if overrides:
        cfg = replace(cfg, train=replace(cfg.train, **overrides))
    train(cfg, args.out, log=lambda m: print(m, flush=True))


if __name__ == "__main__":
    main()
