"""Training examples from synthetic tasks, built the way the predictor builds its inputs.

One example: a target group of the task is the query spec; its context is (sometimes) a few of
its own runs plus the runs of the nearest other groups up to the cap (features.select_context,
as at inference); its queries are its remaining runs and configurations drawn over the search
box of the recommender (the prior optimum /30 to x30), some with weight decay following the
timescale rule as the recommender sets it, all with outcomes sampled from the task's surface.
"""

from dataclasses import dataclass

import numpy as np

from predictor.pfn.features import Runs, Spec, episode, select_context, targets
from predictor.pfn.prior import PriorConfig, sample_task

SEARCH_BOX = np.log(30.0)
OWN_RUNS_PROB = 0.4  # examples whose context includes some of the target group's own runs


@dataclass(frozen=True)
class Example:
    context: np.ndarray  # (C, n_context_features)
    queries: np.ndarray  # (Q, n_query_features)
    y: np.ndarray  # (Q,) targets


def make_example(rng: np.random.Generator, prior: PriorConfig, n_queries: int,
                 max_context: int) -> Example:
    while True:
        task = sample_task(rng, prior)
        ex = _example(rng, task, n_queries, max_context)
        if ex is not None:
            return ex


def _example(rng, task, n_queries: int, max_context: int) -> Example | None:
    groups = task.groups
    t = int(rng.integers(len(groups)))
    target = groups[t]
    spec = Spec(n_params=target.n_params, n_active=target.n_active, n_tokens=target.n_tokens,
                bits=float(target.bits))
    own = target.runs
    n_own = 0
    if len(groups) == 1 or rng.random() < OWN_RUNS_PROB:
        n_own = int(rng.integers(1, max(2, len(own))))  # at least one run left to query
    perm = rng.permutation(len(own))
    own_ctx, own_qry = own.take(perm[:n_own]), own.take(perm[n_own:])
    others = [g.runs for i, g in enumerate(groups) if i != t]
    pool = Runs.concat([own_ctx] + others) if others else own_ctx
    context = pool.take(select_context(pool, spec, max_context))
    if not context.completed.any():
        return None

    n_design = min(len(own_qry), n_queries // 2)
    design = own_qry.take(rng.choice(len(own_qry), n_design, replace=False)) if n_design else None
    n_box = n_queries - n_design
    u = rng.uniform(-SEARCH_BOX, SEARCH_BOX, n_box)
    v = rng.uniform(-SEARCH_BOX, SEARCH_BOX, n_box)
    rule = rng.random(n_box) < 0.3
    hp_task = task.hyperparameters(target, u, v, rng)
    hp_rule = task.hyperparameters(target, u, v, rng, timescale_rule=True)
    hp = [np.where(rule, a, b) for a, b in zip(hp_rule, hp_task)]
    box = task.sample(target, *hp, rng)
    queries = Runs.concat([design, box]) if design is not None else box
    ep = episode(context, queries, spec)
    y = targets(queries, ep)
    # A diverged run without a loss is a draw from the diverged-loss range (1.6-3.2x best).
    missing = ~np.isfinite(y)
    if missing.any():
        blown = target.base_loss * rng.uniform(*task.config.diverged_loss_ratio, missing.sum())
        y[missing] = np.log(blown) - ep.query_log_anchor[missing]
    return Example(context=ep.context, queries=ep.queries, y=y.astype(np.float32))


def collate(examples: list[Example]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pads contexts to the longest: (ctx (B, C, F), mask (B, C), qry (B, Q, F'), y (B, Q))."""
    c = max(len(e.context) for e in examples)
    ctx = np.zeros((len(examples), c, examples[0].context.shape[1]), dtype=np.float32)
    mask = np.zeros((len(examples), c), dtype=bool)
    for i, e in enumerate(examples):
        ctx[i, :len(e.context)] = e.context
        mask[i, :len(e.context)] = True
    qry = np.stack([e.queries for e in examples])
    y = np.stack([e.y for e in examples])
    return ctx, mask, qry, y
