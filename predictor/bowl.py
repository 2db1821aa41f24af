"""The quadratic loss bowl around the optimum, and conditional optima under pins.

Coordinates are log-ratios to the optimum: u = ln(lr/lr*), v = ln(B/B*), l = ln(wd/wd*).
The relative excess loss is z' H z. The measured Step Law bowl (reference: a u^2 + b v^2 +
2 rho sqrt(ab) u v) was taken at a fixed weight decay, so it already contains the effect of
the AdamW timescale tau = B / (lr wd D) moving with lr and B. We split it as
    excess = [M(u, v) - c (v - u)^2] + c (v - u - l)^2,
whose second term is a bowl in ln(tau/tau*) = v - u - l: at fixed wd (l = 0) it is the
measured bowl exactly, and a free wd re-centres tau on tau* (the timescale rule). That term is
flat beyond a factor of 100 in tau (TIMESCALE_RANGE).
"""

import math
from dataclasses import dataclass

import numpy as np

COORDS = ("lr", "batch_size_tokens", "weight_decay")
# Reference: a = 0.0097 (D/1e10)^-0.28, b = 0.0075 (D/1e10)^-0.10, rho = -0.34.
STEPLAW_BOWL = {"a": 0.0097, "a_exp": -0.28, "b": 0.0075, "b_exp": -0.10, "rho": -0.34,
                "d_ref": 1e10}
# Curvature of the timescale term as a fraction of the smaller of a and b: keeps the split
# positive definite at every D. An assumption (loss is flat in tau over a factor ~2), not a fit.
TIMESCALE_CURVATURE_FRACTION = 0.25
# Beyond a factor of e^TIMESCALE_RANGE (100) from the optimal AdamW timescale the timescale
# term stays flat: the rule was measured within about a factor of 10 of it, and without decay
# (an infinite timescale) the loss is finite, not the quadratic's. An assumption, not a fit;
# without it a weight decay of 1e-300 predicted a loss of 1500 and a lr of 1e-10 one below the
# optimum's (the quadratic's gain, unbounded, at the timescale-rule weight decay).
TIMESCALE_RANGE = math.log(100.0)


def timescale_excess(log_ratio):
    """The timescale term's excess per unit curvature at ln(tau/tau*) = log_ratio."""
    return np.clip(log_ratio, -TIMESCALE_RANGE, TIMESCALE_RANGE) ** 2


@dataclass(frozen=True)
class Bowl:
    a: float  # curvature in u = ln(lr/lr*)
    b: float  # curvature in v = ln(B/B*)
    rho: float  # correlation of u and v
    c: float  # curvature in ln(tau/tau*)

    @classmethod
    def steplaw(cls, n_tokens: float) -> "Bowl":
        """The reference's fit on the Step Law dense grid (error about 0.4%)."""
        k = STEPLAW_BOWL
        scale = n_tokens / k["d_ref"]
        a = k["a"] * scale ** k["a_exp"]
        b = k["b"] * scale ** k["b_exp"]
        return cls(a=a, b=b, rho=k["rho"], c=TIMESCALE_CURVATURE_FRACTION * min(a, b))

    @property
    def cross(self) -> float:
        """The u-v term of the hessian."""
        return self.rho * np.sqrt(self.a * self.b)

    @property
    def hessian(self) -> np.ndarray:
        cross, c = self.cross, self.c
        return np.array([[self.a, cross, c], [cross, self.b, -c], [c, -c, c]])

    def excess(self, z: np.ndarray) -> np.ndarray | float:
        """z' H z for z = (u, v, ln(wd/wd*)) (one row per point, or one point), with the
        timescale part c (u - v + w)^2 (= c ln(tau*/tau)^2) flat beyond TIMESCALE_RANGE."""
        z = np.asarray(z, float)
        u, v, w = z[..., 0], z[..., 1], z[..., 2]
        lr_batch = (self.a * u**2 + self.b * v**2 + 2 * self.cross * u * v
                    - self.c * (u - v) ** 2)
        out = lr_batch + self.c * timescale_excess(u - v + w)
        return float(out) if out.ndim == 0 else out

    def conditional_optimum(self, pinned: dict[int, float]) -> np.ndarray:
        """The z minimising the excess with the given coordinates fixed."""
        h = self.hessian
        z = np.zeros(3)
        pinned_idx = sorted(pinned)
        free = [i for i in range(3) if i not in pinned]
        for i in pinned_idx:
            z[i] = pinned[i]
        if free and pinned_idx:
            h_ff = h[np.ix_(free, free)]
            h_fp = h[np.ix_(free, pinned_idx)]
            z[free] = -np.linalg.solve(h_ff, h_fp @ z[pinned_idx])
        return z

    def profile_curvature(self, index: int, pinned: set[int]) -> float:
        """Curvature along one free coordinate with the other free ones re-optimised."""
        free = [i for i in range(3) if i not in pinned]
        h_ff = self.hessian[np.ix_(free, free)]
        return 1.0 / np.linalg.inv(h_ff)[free.index(index), free.index(index)]
