"""The PFN's pieces: bar distribution, network, features and context selection."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from predictor.bowl import Bowl
from predictor.pfn.bar import BarDistribution, borders_from_samples
from predictor.pfn.config import ModelConfig, PFNConfig
from predictor.pfn.episodes import collate, make_example
from predictor.pfn.features import (CONTEXT_FEATURES, QUERY_FEATURES, Runs, Spec, episode,
                                    prior_excess, select_context)
from predictor.pfn.model import build_model
from predictor.pfn.prior import PriorConfig
from predictor.pfn.summary import summarise


def small_model(n_buckets=50, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(n_context_features=len(CONTEXT_FEATURES), n_query_features=len(QUERY_FEATURES),
                      d_model=16, n_heads=2, n_layers=2, d_ff=32, n_buckets=n_buckets)
    borders = torch.linspace(-0.1, 1.2, n_buckets + 1, dtype=torch.float64)
    return build_model(cfg, borders).eval()


def test_bar_density_integrates_to_one_and_quantiles_invert_the_cdf():
    bar = BarDistribution(torch.tensor([0.0, 0.1, 0.3, 0.6, 1.0], dtype=torch.float64))
    logits = torch.tensor([[0.2, 1.0, -0.5, 0.3]], dtype=torch.float64)
    grid = torch.linspace(0, 1, 20001, dtype=torch.float64)[:-1] + 0.5 / 20000
    density = torch.exp(-bar.nll(logits.expand(len(grid), 4), grid))
    assert density.mean().item() == pytest.approx(1.0, rel=1e-3)
    p = torch.softmax(logits, -1)[0]
    median = bar.quantile(logits, 0.5).item()
    cdf = (density * (grid <= median)).mean().item()
    assert cdf == pytest.approx(0.5, abs=1e-3)
    assert bar.quantile(logits, 0.1).item() < median < bar.quantile(logits, 0.9).item()
    centres = torch.tensor([0.05, 0.2, 0.45, 0.8], dtype=torch.float64)
    assert bar.mean(logits).item() == pytest.approx((p * centres).sum().item())
    assert bar.mean_exp(logits).item() == pytest.approx(torch.exp(grid).mul(density).mean().item(), rel=1e-4)


def test_borders_follow_the_samples_quantiles_and_increase():
    y = np.random.default_rng(0).normal(size=5000)
    b = borders_from_samples(np.concatenate([y, np.zeros(2000)]), 100)
    assert len(b) == 101 and np.all(np.diff(b) > 0)
    assert b[0] < y.min() and b[-1] > y.max()


def test_queries_see_only_the_context_and_padding_is_ignored():
    model = small_model()
    rng = np.random.default_rng(0)
    ex = make_example(rng, PriorConfig(), n_queries=8, max_context=60)
    ctx, mask, qry, _ = (torch.from_numpy(a) for a in collate([ex]))
    with torch.no_grad():
        full = model(ctx, qry, mask)
        alone = model(ctx, qry[:, :1], mask)  # one query without the others
        padded = model(torch.cat([ctx, torch.randn(1, 7, ctx.shape[2])], 1), qry,
                       torch.cat([mask, torch.zeros(1, 7, dtype=torch.bool)], 1))
        perm = torch.randperm(ctx.shape[1])
        shuffled = model(ctx[:, perm], qry, mask[:, perm])
    torch.testing.assert_close(alone[0, 0], full[0, 0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(padded, full, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(shuffled, full, rtol=1e-4, atol=1e-5)


def joint_forward(model, ctx, qry, ctx_mask):
    """The forward pass as first written, context and query tokens in one attention call per
    layer (before the split into encode_context and answer): the reference the split and the
    predictor's context cache are checked against."""
    c, q = model.encode_ctx(ctx), model.encode_qry(qry)
    mask = ctx_mask[:, None, None, :]
    for layer in model.layers:
        b, n, d = c.shape
        qc, k, v = layer.qkv(layer.norm_attn(c)).chunk(3, dim=-1)
        qq = F.linear(layer.norm_attn(q), layer.qkv.weight[:d], layer.qkv.bias[:d])
        att = F.scaled_dot_product_attention(layer._heads(torch.cat([qc, qq], dim=1)),
                                             layer._heads(k), layer._heads(v), attn_mask=mask)
        x = torch.cat([c, q], dim=1) + layer.out(att.transpose(1, 2).reshape(b, -1, d))
        x = x + layer.ff(layer.norm_ff(x))
        c, q = x[:, :n], x[:, n:]
    return model.head(model.norm(q))


def test_an_encoded_context_answers_any_queries_as_the_full_forward_pass():
    """encode_context once, answer several query sets: the logits of the joint forward pass,
    for a padded batch of tasks of different context lengths."""
    model = small_model(seed=2)
    rng = np.random.default_rng(4)
    examples = [make_example(rng, PriorConfig(), n_queries=12, max_context=m) for m in (40, 90, 25)]
    ctx, mask, qry, _ = (torch.from_numpy(a) for a in collate(examples))
    assert not mask.all()  # padded
    with torch.no_grad():
        encoding = model.encode_context(ctx, mask)
        for part in (qry, qry[:, :5], qry[:, 7:].flip(1)):
            expected = joint_forward(model, ctx, part, mask)
            torch.testing.assert_close(model.answer(part, encoding), expected, rtol=0, atol=1e-5)
            torch.testing.assert_close(model(ctx, part, mask), expected, rtol=0, atol=1e-5)
    assert len(encoding.keys) == len(encoding.values) == len(model.layers)


def test_a_few_training_steps_lower_the_loss():
    model = small_model(seed=1).train()
    rng = np.random.default_rng(1)
    batch = [torch.from_numpy(a) for a in collate(
        [make_example(rng, PriorConfig(), 16, 100) for _ in range(8)])]
    ctx, mask, qry, y = batch
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        loss = model.bar.nll(model(ctx, qry, mask), y).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first - 0.3


def test_build_model_checks_the_border_count():
    cfg = ModelConfig(n_context_features=3, n_query_features=2, n_buckets=10)
    with pytest.raises(ValueError):
        build_model(cfg, torch.linspace(0, 1, 10))


def test_config_json_round_trip_and_data_hash():
    cfg = PFNConfig(model=ModelConfig(n_context_features=18, n_query_features=15))
    assert PFNConfig.from_json(cfg.to_json()) == cfg
    other = PFNConfig(model=cfg.model, prior=PriorConfig(noise_median=1e-3))
    assert cfg.data_hash() != other.data_hash()


def test_prior_excess_is_the_published_bowl():
    rng = np.random.default_rng(2)
    for d in (4e9, 2e10, 1e11):
        z = rng.normal(size=3)
        expected = Bowl.steplaw(d).excess(z)
        got = prior_excess(z[0], z[1], z[2], 0.0, d)
        assert float(got) == pytest.approx(max(expected, 0.0), rel=1e-9)


def runs(groups, seed=0):
    """A few (N, D) groups of 4 runs each; loss rises with the group's distance index."""
    rng = np.random.default_rng(seed)
    parts = []
    for k, (n, d) in enumerate(groups):
        m = 4
        parts.append(Runs(n_params=np.full(m, n), n_active=np.full(m, n), n_tokens=np.full(m, d),
                          bits=np.full(m, 16.0), lr=rng.uniform(1e-4, 1e-2, m),
                          batch=np.full(m, 5e5), weight_decay=np.full(m, 0.1), qat=np.zeros(m),
                          loss=np.full(m, 2.5 + 0.1 * k), diverged=np.zeros(m, dtype=bool)))
    return Runs.concat(parts)


def test_context_is_the_spec_and_its_nearest_groups_up_to_the_cap():
    table = runs([(1e9, 8e10), (1e9, 2e10), (4e8, 2e10), (1e9, 2.2e10)])
    spec = Spec(n_params=1e9, n_active=1e9, n_tokens=2e10, bits=16)
    idx = select_context(table, spec, cap=10)
    assert len(idx) == 10
    assert set(idx[:4]) == set(range(4, 8))  # its own runs first
    assert set(idx[4:8]) == set(range(12, 16))  # then the nearest group (2.2e10 tokens)
    np.testing.assert_array_equal(idx, select_context(table, spec, cap=10))  # deterministic
    assert len(select_context(table, spec, cap=1000)) == 16


def test_episode_needs_a_completed_context_run():
    table = runs([(1e9, 2e10)])
    spec = Spec(n_params=1e9, n_active=1e9, n_tokens=2e10, bits=16)
    diverged = Runs(**{**table.__dict__, "diverged": np.ones(len(table), dtype=bool)})
    assert episode(diverged, table, spec) is None
    ep = episode(table, table, spec)
    assert ep.context.shape == (len(table), len(CONTEXT_FEATURES))
    assert ep.queries.shape == (len(table), len(QUERY_FEATURES))


def test_summary_recovers_a_smooth_trend_across_groups():
    """Exact linear trends in the groups' levels and optima are carried to the query spec."""
    rng = np.random.default_rng(3)
    offsets, u, v, r = [], [], [], []
    for dn, dd in ((-0.5, 0.0), (0.5, 0.0), (0.0, -0.7), (0.0, 0.7), (0.4, 0.4)):
        uu = rng.uniform(-1, 1, 30)
        vv = rng.uniform(-1, 1, 30)
        u0, v0, level = 0.1 + 0.02 * dn, -0.2 + 0.03 * dd, 0.05 + 0.01 * dn
        r.append(level + 0.01 * ((uu - u0) ** 2 + (vv - v0) ** 2))
        u.append(uu)
        v.append(vv)
        offsets.append(np.tile([dn, dn, dd], (30, 1)))
    u, v, r = np.concatenate(u), np.concatenate(v), np.concatenate(r)
    s = summarise(np.concatenate(offsets), np.ones(len(u), dtype=bool), u, v, r)
    assert s.level == pytest.approx(0.05, abs=0.002)
    assert s.u0 == pytest.approx(0.1, abs=0.1)
    assert s.v0 == pytest.approx(-0.2, abs=0.15)
