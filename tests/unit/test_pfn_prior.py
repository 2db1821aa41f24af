"""The PFN's prior (predictor/pfn/prior.py) produces sweeps with the properties the reference
and the Step Law dataset README quote for the real dense sweep. Synthetic only: no test reads
the real file (benchmarks/pfn_prior.py compares with it; docs/pfn.md has the figures)."""

import math

import numpy as np
import pytest

from benchmark_db.records import TrainingSpec
from predictor.pfn.features import law_point
from predictor.pfn.prior import DESIGNS, PRIOR_VERSION, PriorConfig, sample_task
from predictor.pfn.sweep_stats import group_stats, summarise
from predictor.prior import LawOptimum

# Step Law's fitted range (laws.STEPLAW_RANGE): N 0.2-1.1B, 19-470 tokens per parameter.
N_RANGE, TPP_RANGE = (2e8, 1.1e9), (19.0, 470.0)


def steplaw_like_groups(n_tasks=300, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_tasks):
        n = math.exp(rng.uniform(*np.log(N_RANGE)))
        tpp = math.exp(rng.uniform(*np.log(TPP_RANGE)))
        task = sample_task(rng, PriorConfig(), design="grid", sizes=[(n, n * tpp)])
        out.append((task, task.groups[0]))
    return out


@pytest.fixture(scope="module")
def groups():
    return steplaw_like_groups()


def test_a_factor_two_off_in_lr_costs_what_the_reference_says(groups):
    """Reference: a factor 2 off in lr costs about 0.25-0.6% (noise-free, at the optimum's
    batch and weight decay)."""
    regret = []
    for task, g in groups:
        e, _ = task.excess(g, np.array([2 * g.lr_opt]), np.array([g.batch_opt]),
                           np.array([g.wd_opt]), np.array([0.0]))
        regret.append(e[0])
    p10, p50, p90 = np.percentile(regret, [10, 50, 90])
    assert 0.0025 <= p50 <= 0.006
    assert 0.001 <= p10 and p90 <= 0.012


def test_divergence_rate_of_grids_is_near_the_real_sweeps(groups):
    """README: about 9% of the dense sweep's runs diverged."""
    stats = summarise([group_stats(g.runs.lr, g.runs.batch, g.runs.loss, g.runs.diverged)
                       for _, g in groups])
    assert 0.05 <= stats["divergence_rate"]["mean"] <= 0.15


def test_noise_level_matches_the_best_versus_second_best_gap(groups):
    """README: within a group the best and second-best run differ by a median 0.0016 nats."""
    stats = summarise([group_stats(g.runs.lr, g.runs.batch, g.runs.loss, g.runs.diverged)
                       for _, g in groups])
    assert 0.0008 <= stats["best_gap"]["median"] <= 0.0032


def test_diverged_and_completed_runs_are_separated_as_the_importer_does(groups):
    """Completed runs end within 1.5x of the group's best, diverged ones (with a loss) above."""
    for _, g in groups:
        r = g.runs
        ok = r.completed
        best = r.loss[ok].min()
        assert np.all(r.loss[ok] <= 1.5 * best * 1.001)
        blown = r.diverged & np.isfinite(r.loss)
        assert np.all(r.loss[blown] > 1.5 * g.base_loss)


def test_losses_and_optima_are_plausible(groups):
    best = np.array([g.runs.loss[g.runs.completed].min() for _, g in groups
                     if g.runs.completed.any()])
    assert np.all((best > 1.7) & (best < 4.5))
    law = np.array([float(law_point(g.n_active, g.n_tokens, 16).lr) for _, g in groups])
    offsets = np.log([g.lr_opt for _, g in groups] / law)
    # The optimum scatters around the law by about the law's uncertainty, widened.
    assert 0.1 < np.std(offsets) < 0.6 and abs(np.mean(offsets)) < 0.1


def test_sampling_is_reproducible_and_covers_every_design():
    a = sample_task(np.random.default_rng(5))
    b = sample_task(np.random.default_rng(5))
    assert [g.base_loss for g in a.groups] == [g.base_loss for g in b.groups]
    np.testing.assert_array_equal(a.groups[0].runs.loss, b.groups[0].runs.loss)
    rng = np.random.default_rng(0)
    for design in DESIGNS:
        task = sample_task(rng, design=design)
        assert all(len(g.runs) >= 1 for g in task.groups)


def test_tasks_vary_sizes_quantization_and_weight_decay():
    rng = np.random.default_rng(1)
    tasks = [sample_task(rng) for _ in range(200)]
    cfg = PriorConfig()
    assert max(len(t.groups) for t in tasks) <= cfg.max_groups
    assert np.mean([len(t.groups) > 1 for t in tasks]) > 0.6
    quantized = [t for t in tasks if t.groups[0].bits < 16]
    assert 0.1 < len(quantized) / len(tasks) < 0.4
    assert all(0 < g.qat_opt < 1 for t in quantized for g in t.groups)
    assert any(t.wd_mode[0] == "varied" for t in tasks)
    assert any(t.wd_mode == ("fixed", 0.1) for t in tasks)
    moe = [g for t in tasks for g in t.groups if g.n_params > g.n_active * 1.01]
    assert moe
    # Base losses differ across tasks (corpora) at the same size.
    levels = [t.groups[0].base_loss / float(law_point(t.groups[0].n_active, t.groups[0].n_tokens,
                                                     t.groups[0].bits).base_loss) for t in tasks]
    assert np.std(np.log(levels)) > 0.03


def test_config_round_trips_and_names_its_version():
    cfg = PriorConfig()
    assert cfg.version == PRIOR_VERSION
    assert PriorConfig.from_dict(cfg.as_dict()) == cfg


def test_law_point_is_the_prior_recommenders_optimum():
    for n, d, bits in ((1e9, 2e10, 16), (2e8, 2e11, 16), (7e9, 1e13, 4), (3e8, 6e9, 2)):
        spec = TrainingSpec(n_params=n, n_active_params=n, n_tokens=d, weight_bits=bits)
        ref = LawOptimum(spec)
        got = law_point(n, d, bits)
        assert float(got.lr) == pytest.approx(ref.values["lr"], rel=1e-9)
        assert float(got.batch) == pytest.approx(ref.values["batch_size_tokens"], rel=1e-9)
        assert float(got.weight_decay) == pytest.approx(ref.values["weight_decay"], rel=1e-9)
        assert float(got.qat) == pytest.approx(ref.qat_fraction, abs=1e-12)
        assert float(got.base_loss) == pytest.approx(ref.base_loss, rel=1e-9)
