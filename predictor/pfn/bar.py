"""The bar (Riemann) distribution of the PFN papers: the real line cut into buckets at fixed
borders, a categorical over buckets, uniform density within each. Borders are quantiles of the
prior's targets, so buckets are narrow where the prior puts its mass; targets outside the
outer borders are clamped into the outer buckets."""

import numpy as np
import torch


def borders_from_samples(y: np.ndarray, n_buckets: int) -> np.ndarray:
    """n_buckets + 1 increasing borders at quantiles of y, the outer ones a little outside."""
    y = np.sort(y[np.isfinite(y)])
    q = np.quantile(y, np.linspace(0, 1, n_buckets + 1))
    # Quantiles can repeat where the prior has atoms: enforce a minimum width.
    span = q[-1] - q[0]
    q[0] -= 0.05 * span
    q[-1] += 0.05 * span
    min_width = 1e-5 * span
    for i in range(1, len(q)):
        q[i] = max(q[i], q[i - 1] + min_width)
    return q


class BarDistribution(torch.nn.Module):
    def __init__(self, borders: torch.Tensor):
        super().__init__()
        self.register_buffer("borders", borders.to(torch.float64).clone())

    @property
    def n_buckets(self) -> int:
        return len(self.borders) - 1

    @property
    def widths(self) -> torch.Tensor:
        return self.borders[1:] - self.borders[:-1]

    def nll(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Negative log density of y (per element) under the distribution of logits[..., :]."""
        b = self.borders.to(logits.dtype)
        y = y.to(logits.dtype).clamp(b[0], b[-1])
        idx = (torch.searchsorted(b, y.contiguous(), right=True) - 1).clamp(0, self.n_buckets - 1)
        logp = torch.log_softmax(logits, dim=-1)
        log_width = torch.log(self.widths.to(logits.dtype))
        return -(logp.gather(-1, idx.unsqueeze(-1)).squeeze(-1) - log_width[idx])

    @torch.no_grad()
    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(logits.double(), dim=-1)
        centres = (self.borders[1:] + self.borders[:-1]) / 2
        return p @ centres

    @torch.no_grad()
    def mean_exp(self, logits: torch.Tensor) -> torch.Tensor:
        """E[exp(y)]: exact for the within-bucket uniform density."""
        p = torch.softmax(logits.double(), dim=-1)
        lo, hi = self.borders[:-1], self.borders[1:]
        return p @ ((torch.exp(hi) - torch.exp(lo)) / (hi - lo))

    @torch.no_grad()
    def cdf(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """P(Y <= y) per element."""
        p = torch.softmax(logits.double(), dim=-1)
        b = self.borders
        y = y.double().clamp(b[0], b[-1])
        idx = (torch.searchsorted(b, y.contiguous(), right=True) - 1).clamp(0, self.n_buckets - 1)
        before = torch.cumsum(p, dim=-1) - p
        frac = (y - b[idx]) / self.widths[idx]
        return before.gather(-1, idx.unsqueeze(-1)).squeeze(-1) + frac * p.gather(-1, idx.unsqueeze(-1)).squeeze(-1)

    @torch.no_grad()
    def quantile(self, logits: torch.Tensor, q: float) -> torch.Tensor:
        p = torch.softmax(logits.double(), dim=-1)
        cdf = torch.cumsum(p, dim=-1)
        target = torch.full(cdf.shape[:-1] + (1,), q, dtype=cdf.dtype)
        i = torch.searchsorted(cdf, target).squeeze(-1).clamp(0, self.n_buckets - 1)
        cdf_before = torch.where(i > 0, cdf.gather(-1, (i - 1).clamp(min=0).unsqueeze(-1)).squeeze(-1),
                                 torch.zeros_like(i, dtype=cdf.dtype))
        p_i = p.gather(-1, i.unsqueeze(-1)).squeeze(-1)
        frac = ((q - cdf_before) / p_i.clamp(min=1e-300)).clamp(0, 1)
        return self.borders[i] + frac * self.widths[i]
