"""A summary of the context at the query spec, computed before the network sees it: ridge
regressions across the context's groups of each group's level and optimum on the group's
log-size offsets from the query spec, evaluated at offset zero.

Per group (rows with equal offsets) with completed runs: level = its best r (log loss over the
Epoch base loss); optimum = a soft argmin of (u, v) over its completed runs (weights
exp(-(r - best) / SOFTMIN_TEMPERATURE)). The ridge priors shrink the slopes to zero (the
features are already relative to the published laws) with sds near the laws' exponent sds;
group estimates from few runs count less. The network gets these as features and learns, on
the prior, how far to trust them.
"""

from dataclasses import dataclass

import numpy as np

SOFTMIN_TEMPERATURE = 0.003  # a few times the noise level of a final loss (relative)
# (intercept prior sd, slope prior sd, group noise sd, extra noise sd for a one-run group)
LEVEL_RIDGE = (1.0, 0.03, 0.004, 0.03)
U_RIDGE = (0.3, 0.05, 0.15, 0.5)
V_RIDGE = (0.4, 0.05, 0.3, 0.5)


@dataclass(frozen=True)
class Summary:
    level: float
    u0: float
    v0: float


def summarise(offsets: np.ndarray, completed: np.ndarray, u: np.ndarray, v: np.ndarray,
              r: np.ndarray) -> Summary:
    """offsets (rows, 3): (dn, dna, dd) of each context row's group from the query spec."""
    ok = completed & np.isfinite(r)
    keys, inverse = np.unique(np.round(offsets[ok], 9), axis=0, return_inverse=True)
    inverse = inverse.ravel()
    n_groups = len(keys)
    level, uo, vo, count = (np.empty(n_groups) for _ in range(4))
    r_ok, u_ok, v_ok = r[ok], u[ok], v[ok]
    for g in range(n_groups):
        rows = inverse == g
        best = r_ok[rows].min()
        w = np.exp(-(r_ok[rows] - best) / SOFTMIN_TEMPERATURE)
        level[g], count[g] = best, rows.sum()
        uo[g] = np.sum(w * u_ok[rows]) / w.sum()
        vo[g] = np.sum(w * v_ok[rows]) / w.sum()
    x = np.concatenate([np.ones((n_groups, 1)), keys], axis=1)
    return Summary(level=_ridge_at_zero(x, level, count, LEVEL_RIDGE, prior_mean=level.min()),
                   u0=_ridge_at_zero(x, uo, count, U_RIDGE),
                   v0=_ridge_at_zero(x, vo, count, V_RIDGE))


def _ridge_at_zero(x, t, count, ridge, prior_mean: float = 0.0) -> float:
    """Posterior mean of the intercept of t ~ x beta with beta ~ N((prior_mean, 0...), diag)."""
    intercept_sd, slope_sd, noise_sd, one_run_sd = ridge
    noise_var = noise_sd ** 2 + one_run_sd ** 2 / count
    prior_prec = np.diag([intercept_sd ** -2] + [slope_sd ** -2] * (x.shape[1] - 1))
    mean = np.zeros(x.shape[1])
    mean[0] = prior_mean
    a = x.T @ (x / noise_var[:, None]) + prior_prec
    b = x.T @ (t / noise_var) + prior_prec @ mean
    return float(np.linalg.solve(a, b)[0])
