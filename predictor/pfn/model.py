"""The network: a small transformer over a set of context runs and query points.

Context tokens attend to each other; query tokens attend to the context only (never to other
queries), so each query's prediction is independent of which other queries share the batch,
as in the PFN papers. Both kinds of tokens share the layers' weights and have their own input
encoders. The head gives logits over the bar distribution's buckets.

Because no context token attends to a query, the context's keys and values in every layer do
not depend on the queries: the forward pass is encode_context (once per context) followed by
answer (per set of queries), and a caller that asks many query sets of one context (the
predictor's recommendation grids) encodes it once.
"""

from dataclasses import dataclass

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

    def _attend(self, x, q, k, v, mask):
        """x + attention of q (heads) to the context's k, v (heads), then the feed-forward block."""
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        b, _, n, _ = att.shape
        x = x + self.out(att.transpose(1, 2).reshape(b, n, -1))
        return x + self.ff(self.norm_ff(x))

    def encode(self, ctx, mask, last: bool = False):
        """(keys, values, next ctx) of the context tokens ctx (B, C, d): keys and values (B,
        heads, C, d / heads) after the norm and projection, which is all the queries read of
        this layer; the next layer's context tokens (None for the last layer: nothing reads
        them). mask (B, 1, 1, C): True where a context token is real. Keys and values are
        copied out of the projection's output, so that a kept encoding holds only them."""
        qc, k, v = (self._heads(t) for t in self.qkv(self.norm_attn(ctx)).chunk(3, dim=-1))
        k, v = k.contiguous(), v.contiguous()
        return k, v, None if last else self._attend(ctx, qc, k, v, mask)

    def answer(self, qry, k, v, mask):
        """Query tokens qry (B, Q, d) after this layer, attending to the context's keys, values."""
        d = qry.shape[-1]
        # Queries need only the query projection: they are never attended to.
        qq = F.linear(self.norm_attn(qry), self.qkv.weight[:d], self.qkv.bias[:d])
        return self._attend(qry, self._heads(qq), k, v, mask)


@dataclass(frozen=True)
class ContextEncoding:
    """What the queries need of an encoded context: per layer, the context tokens' keys and
    values (B, heads, C, d / heads), and the attention mask (B, 1, 1, C). Depends only on the
    context, so it can be kept and reused for any number of query sets."""

    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]
    mask: torch.Tensor


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

    def encode_context(self, ctx, ctx_mask) -> ContextEncoding:
        """ctx (B, C, n_context_features), ctx_mask (B, C) True where a context token is real."""
        c, mask = self.encode_ctx(ctx), ctx_mask[:, None, None, :]
        keys, values = [], []
        for i, layer in enumerate(self.layers):
            k, v, c = layer.encode(c, mask, last=i == len(self.layers) - 1)
            keys.append(k)
            values.append(v)
        return ContextEncoding(keys=tuple(keys), values=tuple(values), mask=mask)

    def answer(self, qry, encoding: ContextEncoding) -> torch.Tensor:
        """Logits (B, Q, n_buckets) for queries qry (B, Q, n_query_features) given their
        contexts' encoding (same batch size B)."""
        q = self.encode_qry(qry)
        for layer, k, v in zip(self.layers, encoding.keys, encoding.values):
            q = layer.answer(q, k, v, encoding.mask)
        return self.head(self.norm(q))

    def forward(self, ctx, qry, ctx_mask) -> torch.Tensor:
        """Logits (B, Q, n_buckets) for each query given its task's context: the full pass,
        context and queries."""
        return self.answer(qry, self.encode_context(ctx, ctx_mask))


def build_model(cfg: ModelConfig, borders: torch.Tensor) -> PFN:
    if len(borders) != cfg.n_buckets + 1:
        raise ValueError(f"{len(borders)} borders for {cfg.n_buckets} buckets")
    return PFN(cfg, borders)
