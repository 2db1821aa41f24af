"""Statistics of one group's sweep, computed the same way on synthetic and real sweeps: what
tests/unit/test_pfn_prior.py checks the prior against (the properties the reference and the
dataset README quote) and what benchmarks/pfn_prior.py compares with the real file."""

import numpy as np


def group_stats(lr: np.ndarray, batch: np.ndarray, loss: np.ndarray, diverged: np.ndarray) -> dict:
    """divergence_rate; best_gap: second-best minus best completed loss (nats); lr2x_regret and
    lr_half_regret: relative excess of the run at 2x (1/2x) the best run's lr, same batch, over
    the best (NaN if the grid has no such run); completed_spread: worst completed over best - 1;
    best_u/best_v are not here (they need the law: see best_log_ratios)."""
    ok = ~diverged & np.isfinite(loss)
    out = {"divergence_rate": float(np.mean(diverged)), "runs": int(len(lr))}
    if ok.sum() < 2:
        return out | {"best_gap": np.nan, "lr2x_regret": np.nan, "lr_half_regret": np.nan,
                      "completed_spread": np.nan}
    order = np.argsort(np.where(ok, loss, np.inf))
    best, second = order[0], order[1]
    out["best_gap"] = float(loss[second] - loss[best])
    out["completed_spread"] = float(loss[ok].max() / loss[best] - 1)
    for key, factor in (("lr2x_regret", 2.0), ("lr_half_regret", 0.5)):
        same_batch = np.isclose(batch, batch[best], rtol=1e-6)
        near = same_batch & np.isclose(np.log(lr), np.log(lr[best] * factor), atol=0.05)
        if not near.any():
            out[key] = np.nan
            continue
        j = np.flatnonzero(near)[0]
        # A diverged run at 2x counts with the loss it reported (as the backtest's regret does).
        out[key] = float(loss[j] / loss[best] - 1) if np.isfinite(loss[j]) else np.inf
    return out


def summarise(stats: list[dict]) -> dict:
    """Medians and 10th/90th percentiles across groups, ignoring NaN."""
    out = {}
    for key in ("divergence_rate", "best_gap", "lr2x_regret", "lr_half_regret", "completed_spread"):
        v = np.array([s[key] for s in stats], dtype=float)
        v = v[~np.isnan(v)]
        if len(v) == 0:
            continue
        finite = v[np.isfinite(v)]
        out[key] = {"median": float(np.median(v)), "mean": float(np.mean(finite)) if len(finite) else np.nan,
                    "p10": float(np.percentile(v, 10)), "p90": float(np.percentile(v, 90)), "n": int(len(v))}
    return out
