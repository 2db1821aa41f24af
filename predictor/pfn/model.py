"""The network: a small transformer over a set of context runs and query points.

Context tokens attend to each other; query tokens attend to the context only (never to other
queries), so each query's prediction is independent of which other queries share the batch,
as in the PFN papers. Both kinds of tokens share the layers' weights and have their own input
encoders. The head gives logits over the bar distribution's buckets.
"""

import torch
import torch.nn.functional as F
from torch import nn

from predictor.pfn.bar import BarDistribution
from predictor.pfn.config import ModelConfig


class Layer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.norm_attn = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        self.norm_ff = nn.LayerNorm(cfg.d_model)
        self.ff = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_ff), nn.GELU(), nn.Linear(cfg.d_ff, cfg.d_model))
        self.dropout = cfg.dropout

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.n_heads, d // self.n_heads).transpose(1, 2)

    def forward(self, ctx, qry, ctx_mask):
        """ctx (B, C, d), qry (B, Q, d), ctx_mask (B, C) True where a context token is real."""
        b, c, d = ctx.shape
        xc, xq = self.norm_attn(ctx), self.norm_attn(qry)
        qc, k, v = self.qkv(xc).chunk(3, dim=-1)
        # Queries need only the query projection: they are never attended to.
        qq = F.linear(xq, self.qkv.weight[:d], self.qkv.bias[:d])
        mask = ctx_mask[:, None, None, :]  # every token attends to real context tokens only
        att = F.scaled_dot_product_attention(self._heads(torch.cat([qc, qq], dim=1)),
                                             self._heads(k), self._heads(v), attn_mask=mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        att = att.transpose(1, 2).reshape(b, -1, d)
        x = torch.cat([ctx, qry], dim=1) + self.out(att)
        x = x + self.ff(self.norm_ff(x))
        return x[:, :c], x[:, c:]


class PFN(nn.Module):
    def __init__(self, cfg: ModelConfig, borders: torch.Tensor):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.encode_ctx = nn.Sequential(nn.Linear(cfg.n_context_features, d), nn.GELU(), nn.Linear(d, d))
        self.encode_qry = nn.Sequential(nn.Linear(cfg.n_query_features, d), nn.GELU(), nn.Linear(d, d))
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Sequential(nn.Linear(d, cfg.d_ff), nn.GELU(), nn.Linear(cfg.d_ff, cfg.n_buckets))
        self.bar = BarDistribution(borders)

    def forward(self, ctx, qry, ctx_mask) -> torch.Tensor:
        """Logits (B, Q, n_buckets) for each query given its task's context."""
        c, q = self.encode_ctx(ctx), self.encode_qry(qry)
        for layer in self.layers:
            c, q = layer(c, q, ctx_mask)
        return self.head(self.norm(q))


def build_model(cfg: ModelConfig, borders: torch.Tensor) -> PFN:
    if len(borders) != cfg.n_buckets + 1:
        raise ValueError(f"{len(borders)} borders for {cfg.n_buckets} buckets")
    return PFN(cfg, borders)
