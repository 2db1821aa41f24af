"""The learned loss models on synthetic sweeps with a known optimum."""

import warnings

import numpy as np
import pytest
from scipy.stats import spearmanr

from benchmark_db.records import Pins, TrainingSpec
from predictor import laws
from predictor.argmin import ModelRecommender
from predictor.auto import CANDIDATES, AutoModel, within_one_standard_error
from predictor.intervals import MAX_HELD_OUT_GROUPS, held_out_groups
from predictor.prior import LawOptimum
from predictor.residual_gbm import SurfaceGBM
from predictor.surface import D0, MAX_EXCESS, N0, PARAMS, LossSurface, linex
from predictor.table import RunTable
from tests.factories import SWEEP_GROUPS, make_report, synthetic_sweep, true_optimum

ALL = RunTable.from_runs(synthetic_sweep())
HELD_OUT = SWEEP_GROUPS[3]


def without(table: RunTable, group) -> RunTable:
    keep = ~((table.n_params == group[0]) & (table.n_tokens == group[1]))
    return table.subset(keep)


def recommend(model, train: RunTable, group) -> tuple[float, float]:
    spec = TrainingSpec(n_params=group[0], n_active_params=group[0], n_tokens=group[1])
    rec = ModelRecommender(model, train).recommend(spec, Pins(weight_decay=0.1))
    return rec.lr, rec.batch_size_tokens


@pytest.fixture(scope="module")
def surface():
    return LossSurface().fit(without(ALL, HELD_OUT))


def test_surface_with_no_runs_is_the_published_prior():
    model = LossSurface().fit(RunTable.from_runs([]))
    spec = TrainingSpec(n_params=1e9, n_active_params=1e9, n_tokens=2e10)
    log_lr, log_batch = model.centre(model.theta_, spec.n_active_params, spec.n_tokens)
    assert np.exp(log_lr) == pytest.approx(laws.STEPLAW_LR(spec), rel=1e-9)
    assert np.exp(log_batch) == pytest.approx(laws.STEPLAW_BATCH(spec), rel=1e-9)
    query = RunTable.queries(spec, np.exp(log_lr), np.exp(log_batch), 0.1, 0.0)
    assert model.mean(query)[0] == pytest.approx(laws.EPOCH_LOSS(spec), rel=1e-6)


def test_surface_learns_the_optimum_of_an_unseen_group(surface):
    lr, batch = recommend(surface, without(ALL, HELD_OUT), HELD_OUT)
    true_lr, true_batch = true_optimum(*HELD_OUT)
    assert lr == pytest.approx(true_lr, rel=0.15)  # the prior alone is 1/1.5 off
    assert batch == pytest.approx(true_batch, rel=0.25)
    assert surface.converged_


def test_surface_bounds_lr_below_the_divergence_cliff(surface):
    spec = TrainingSpec(n_params=HELD_OUT[0], n_active_params=HELD_OUT[0], n_tokens=HELD_OUT[1])
    true_lr, true_batch = true_optimum(*HELD_OUT)
    query = RunTable.queries(spec, true_lr, true_batch, 0.1, 0.0)
    boundary = surface.lr_div(query)[0]
    assert 4 * true_lr < boundary < 16 * true_lr  # the synthetic cliff is at 8x
    assert surface.lr_limit(query)[0] == pytest.approx(boundary / 3)


def test_calibrated_intervals_cover_most_of_an_unseen_group(surface):
    held = RunTable.from_runs(synthetic_sweep(groups=(HELD_OUT,), seed=1))
    held = held.subset(held.completed)
    prediction = surface.predict(held)
    inside = (held.loss >= prediction.lo) & (held.loss <= prediction.hi)
    assert 0.5 <= inside.mean() <= 1.0
    assert np.all(prediction.lo < prediction.mean) and np.all(prediction.mean < prediction.hi)
    assert spearmanr(prediction.mean, held.loss).statistic > 0.9


def test_weight_decay_term_vanishes_at_the_reference_and_rewards_the_timescale_rule(surface):
    spec = TrainingSpec(n_params=4e8, n_active_params=4e8, n_tokens=1e11)
    lr, batch = true_optimum(4e8, 1e11)
    rule = batch / (lr * laws.POWER_LINES_TIMESCALE(spec) * spec.n_tokens)
    at = lambda wd: surface.mean(RunTable.queries(spec, lr, batch, wd, 0.0))[0]  # noqa: E731
    assert at(rule) < at(0.1) < at(10 * rule)


@pytest.mark.parametrize("pins", [Pins(lr=1e-10), Pins(weight_decay=1e-300), Pins(lr=10.0),
                                  Pins(batch_size_tokens=2e10)])
def test_surface_answers_stay_sane_at_absurd_pins(surface, pins):
    """A positive, finite loss with a finite interval around it, and never below the spec's own
    optimum: the timescale term's gain was unbounded (lr 1e-10 predicted a loss under the
    optimum's, a tiny spec a negative one), wd 1e-300 cost 1500 nats, and lr 10 had [0, inf]."""
    for spec in (TrainingSpec(n_params=1e9, n_active_params=1e9, n_tokens=2e10),
                 TrainingSpec(n_params=1.3e6, n_active_params=1.3e6, n_tokens=1056, seq_len=128)):
        if pins.batch_size_tokens and pins.batch_size_tokens > spec.n_tokens:
            continue
        recommender = ModelRecommender(surface, without(ALL, HELD_OUT))
        best = recommender.recommend(spec, Pins()).predicted_loss
        rec = recommender.recommend(spec, pins)
        interval = rec.predicted_loss_interval
        assert 0 < interval.lo < rec.predicted_loss < interval.hi < np.inf
        assert interval.hi / interval.lo < 2
        assert rec.predicted_loss >= best * (1 - 1e-3)
        assert rec.predicted_loss <= best * (1 + MAX_EXCESS) * 1.01  # lr 10 predicted 7e7 nats
        assert rec.weight_decay <= 100
    if pins.lr == 10.0:
        assert any("above the surface model's limit" in w for w in rec.warnings)


def test_a_far_flank_overflows_linex_quietly_and_saturates():
    """e^{kx} past ~1e308 is inf, which the penalty's saturation turns into MAX_EXCESS: numpy's
    "overflow encountered in expm1" warning about it reached stderr during `hparamrec
    backtest`. Other values are unchanged."""
    x = np.array([-3.0, 0.0, 1e-5, 2.0, 1e3])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        values = linex(x, 1.0)
        far = LossSurface()
        far.theta_[PARAMS.index("ku")] = 200.0  # e^{ku u} is past 1e308 from u = 3.6 on
        spec = TrainingSpec(n_params=1e9, n_active_params=1e9, n_tokens=2e10)
        excess = far.penalty(far.theta_, RunTable.queries(spec, 10.0, 1e6, 0.1, 0.0))
    assert values[-1] == np.inf
    assert values[:4] == pytest.approx([2 * (np.exp(-3) + 2), 0.0, 1e-10, 2 * (np.exp(2) - 3)])
    assert excess == pytest.approx([MAX_EXCESS])


def test_a_weight_decay_the_rule_asks_above_100_is_clamped_with_a_warning(surface):
    """A pinned lr of 1e-7 asks the timescale rule for a decay of hundreds: the learned
    recommendation says it recommends 100 instead, as the published laws' does (it was silent)."""
    spec = TrainingSpec(n_params=1e9, n_active_params=1e9, n_tokens=2e10)
    recommender = ModelRecommender(surface, without(ALL, HELD_OUT))
    rec = recommender.recommend(spec, Pins(lr=1e-7))
    asked = laws.timescale_rule_weight_decay(spec, 1e-7, rec.batch_size_tokens)
    assert asked > 150 and rec.weight_decay == 100
    assert [w for w in rec.warnings if w.startswith("weight_decay:")] == [
        f"weight_decay: the timescale rule asks for {asked:.3g} at this lr and batch, more than "
        "a run can use (100 at most); 100 is recommended instead"]
    assert not any(w.startswith("weight_decay:")
                   for w in recommender.recommend(spec, Pins(lr=1e-3)).warnings)


def test_one_divergence_warning_on_a_pinned_high_lr(surface):
    """The model with an lr limit gives the warning; the prior's own, based on the laws'
    optimum, used to come too, and said the opposite between the two limits."""
    spec = TrainingSpec(n_params=1e9, n_active_params=1e9, n_tokens=2e10)
    recommender = ModelRecommender(surface, without(ALL, HELD_OUT))
    warned = recommender.recommend(spec, Pins(lr=10.0)).warnings
    assert [w for w in warned if "diverge" in w] == [w for w in warned if "surface model's limit" in w]
    assert len([w for w in warned if "diverge" in w]) == 1


def test_gbm_far_from_data_is_the_surface():
    model = SurfaceGBM(calibrate=False).fit(ALL)
    far = TrainingSpec(n_params=1e11, n_active_params=1e11, n_tokens=1e13)
    lr, batch = true_optimum(1e11, 1e13)
    query = RunTable.queries(far, lr * np.array([0.5, 1, 2]), batch, 0.1, 0.0)
    assert model.mean(query) == pytest.approx(model.surface_.mean(query), rel=1e-9)
    near = RunTable.queries(TrainingSpec(n_params=4e8, n_active_params=4e8, n_tokens=8e9),
                            lr, batch, 0.1, 0.0)
    assert model._shrink(near)[0] == pytest.approx(1.0)


def test_outside_the_stored_sizes_the_intervals_take_in_the_laws():
    """The bootstrap of the surface knows nothing of how far a spec is from the stored runs:
    200x their tokens, its lr interval alone was a few percent wide."""
    from predictor.prior import PriorRecommender

    model = LossSurface(calibrate=False, n_boot=8).fit(ALL)
    recommender = ModelRecommender(model, ALL)
    pins = Pins(weight_decay=0.1)
    far = TrainingSpec(n_params=8e8, n_active_params=8e8, n_tokens=1.2e13)
    rec, law = recommender.recommend(far, pins), PriorRecommender().recommend(far, pins)
    for field in ("lr_interval", "batch_size_tokens_interval"):
        ours, laws_ = getattr(rec, field), getattr(law, field)
        assert ours.lo <= laws_.lo and ours.hi >= laws_.hi
    assert rec.lr_interval.lo <= rec.lr <= rec.lr_interval.hi
    assert any("take in the published laws' too" in w for w in rec.warnings)
    inside = TrainingSpec(n_params=4e8, n_active_params=4e8, n_tokens=2e10)
    near = recommender.recommend(inside, pins)
    assert not any("outside the stored runs" in w for w in near.warnings)
    law_near = PriorRecommender().recommend(inside, pins)
    assert near.lr_interval.hi / near.lr_interval.lo < law_near.lr_interval.hi / law_near.lr_interval.lo


def _optimum_query(n_params: float, n_tokens: float) -> RunTable:
    spec = TrainingSpec(n_params=n_params, n_active_params=n_params, n_tokens=n_tokens)
    return RunTable.queries(spec, *true_optimum(n_params, n_tokens), 0.1, 0.0)


def _relative_width(model, q: RunTable) -> float:
    prediction = model.predict(q)
    return float((prediction.hi[0] - prediction.lo[0]) / prediction.mean[0])


# 2x, 12x and 125x the largest stored model, at a stored 50 tokens per parameter; and a spec
# within the stored sizes.
FAR_PARAMS = (1.6e9, 1e10, 1e11)
INSIDE = _optimum_query(4e8, 2e10)


def test_beyond_the_fitted_sizes_the_loss_interval_widens_with_the_distance(surface):
    """Within the sizes fitted on, the calibrated level error stands alone; past them, the
    level's move there is uncertain, more so the farther (a 125x larger model had the interval
    of a stored one)."""
    assert surface.level_extrapolation_sd(INSIDE).tolist() == [0.0]
    far = [_optimum_query(n, 50 * n) for n in FAR_PARAMS]
    spreads = [surface.level_extrapolation_sd(q)[0] for q in far]
    assert 0 < spreads[0] < spreads[1] < spreads[2]
    widths = [_relative_width(surface, q) for q in [INSIDE, *far]]
    assert widths == sorted(widths) and len(set(widths)) == len(widths)


@pytest.mark.parametrize("make", [SurfaceGBM, lambda: AutoModel(candidates=("surface/e0=0.003",))],
                         ids=["lightgbm", "auto"])
def test_the_answering_models_widen_their_loss_interval_beyond_the_fitted_sizes(make):
    model = make().fit(ALL)
    far = _optimum_query(FAR_PARAMS[-1], 50 * FAR_PARAMS[-1])
    assert _relative_width(model, far) > 1.2 * _relative_width(model, INSIDE)


def test_more_tokens_per_parameter_than_stored_is_an_extrapolation_too():
    """Each size within the stored ones, their ratio not: the surface's centre follows the
    published laws there, and the intervals take theirs in."""
    recommender = ModelRecommender(LossSurface(calibrate=False).fit(ALL), ALL)
    spec = TrainingSpec(n_params=2e8, n_active_params=2e8, n_tokens=6e10)  # 300; stored 20-100
    rec = recommender.recommend(spec, Pins(weight_decay=0.1))
    assert any(w.startswith("surface: tokens_per_param = 300 is outside the stored runs' sweeps")
               for w in rec.warnings)


def test_auto_selects_by_leaving_training_groups_out():
    train = without(ALL, HELD_OUT)
    model = AutoModel().fit(train)
    assert set(model.inner_regret_) == set(CANDIDATES)
    assert model.choice_ == within_one_standard_error(model.inner_regrets_)
    assert model.inner_regret_ == {k: pytest.approx(np.mean(v)) for k, v in model.inner_regrets_.items()}
    assert model.version_.startswith(f"auto[{model.choice_}]")
    lr, _ = recommend(model, train, HELD_OUT)
    assert lr == pytest.approx(true_optimum(*HELD_OUT)[0], rel=0.2)


def test_auto_keeps_the_first_candidate_unless_another_is_better_by_a_standard_error():
    first, second = "surface/e0=0.003", "lightgbm/e0=0.003"
    tied = {first: [0.001, 0.0, 0.002, 0.0], second: [0.0009, 0.0, 0.002, 0.0]}
    assert within_one_standard_error(tied) == first  # a near-tie: no flip
    clear = {first: [0.003, 0.002, 0.003, 0.002], second: [0.0, 0.0, 0.0001, 0.0]}
    assert within_one_standard_error(clear) == second
    assert within_one_standard_error({second: [0.001], first: [0.001]}) == second  # order rules


def test_versions_change_with_the_data():
    a = LossSurface(calibrate=False).fit(without(ALL, SWEEP_GROUPS[0]))
    b = LossSurface(calibrate=False).fit(without(ALL, SWEEP_GROUPS[1]))
    assert a.version_ != b.version_ and a.version_.startswith("surface@")


def test_bootstrap_draws_give_the_optimum_an_interval():
    train = without(ALL, HELD_OUT)
    model = LossSurface(calibrate=False, n_boot=8).fit(train)
    offsets = model.optimum_log_offsets(HELD_OUT[0], HELD_OUT[1])
    assert offsets.shape == (8, 2) and np.all(np.isfinite(offsets))
    assert np.ptp(offsets[:, 0]) > 0  # the draws differ
    spec = TrainingSpec(n_params=HELD_OUT[0], n_active_params=HELD_OUT[0], n_tokens=HELD_OUT[1])
    rec = ModelRecommender(model, train).recommend(spec, Pins(weight_decay=0.1))
    assert rec.lr_interval.lo <= rec.lr <= rec.lr_interval.hi
    assert rec.lr_interval.hi / rec.lr_interval.lo < 3


def test_auto_holds_out_every_group_of_a_small_store_and_a_spread_of_a_large_one():
    few = np.repeat(np.arange(17), 3)  # the real sweep's 17 groups: all held out in turn
    assert held_out_groups(few).tolist() == list(range(17))
    many = held_out_groups(np.repeat(np.arange(200), 2))
    assert len(many) == MAX_HELD_OUT_GROUPS and many[0] == 0 and many[-1] == 199
    assert np.ptp(np.diff(many)) <= 1  # evenly spread over the sizes


def test_auto_skips_a_group_with_only_diverged_runs():
    train = without(ALL, HELD_OUT)
    lone = RunTable.from_runs(synthetic_sweep(groups=((3e8, 3e10),), seed=2))
    lone = lone.subset(lone.diverged)
    model = AutoModel().fit(RunTable.concat([train, lone]))
    assert set(model.inner_regret_) == set(CANDIDATES)
    assert np.isfinite(list(model.inner_regret_.values())).all()


def test_the_ensemble_averages_its_members_in_log_loss_and_learns_an_unseen_group():
    from predictor.ensemble import EnsembleModel

    train = without(ALL, HELD_OUT)
    model = EnsembleModel().fit(train)
    spec = TrainingSpec(n_params=HELD_OUT[0], n_active_params=HELD_OUT[0], n_tokens=HELD_OUT[1])
    true_lr, true_batch = true_optimum(*HELD_OUT)
    queries = RunTable.queries(spec, true_lr * np.array([0.5, 1.0, 2.0]), true_batch, 0.1, 0.0)
    members = [m.predict(queries) for m in model.models_]
    prediction = model.predict(queries)
    assert prediction.mean == pytest.approx(np.exp(np.mean([np.log(p.mean) for p in members], axis=0)))
    assert np.all((prediction.lo <= prediction.mean) & (prediction.mean <= prediction.hi))
    assert model.mean(queries) == pytest.approx(prediction.mean)
    assert model.version_.startswith("ensemble[") and "pfn" in model.version_
    lr, batch = recommend(model, train, HELD_OUT)
    assert lr == pytest.approx(true_lr, rel=0.25)
    assert batch == pytest.approx(true_batch, rel=0.35)


def test_a_mixture_of_experts_sparser_than_the_stored_runs_is_flagged(surface):
    recommender = ModelRecommender(surface, without(ALL, HELD_OUT))  # dense runs only
    moe = TrainingSpec(n_params=8e8, n_active_params=1e8, n_tokens=2e10, architecture="moe")
    dense = TrainingSpec(n_params=4e8, n_active_params=4e8, n_tokens=2e10)
    flagged = lambda spec: [w for w in recommender.recommend(spec, Pins()).warnings  # noqa: E731
                            if "sparser than any stored run" in w]
    assert len(flagged(moe)) == 1 and "= 8" in flagged(moe)[0]
    assert flagged(dense) == []


@pytest.mark.parametrize("loss", [999.0, 0.02, 1.2])  # absurd, or of another corpus
def test_one_odd_report_leaves_the_other_specs_loss_level(loss):
    odd = make_report("odd", n_params=6e8, n_tokens=3e10, lr=2.5e-3, batch=450_000, loss=loss)
    clean = LossSurface(calibrate=False).fit(ALL)
    with_odd = LossSurface(calibrate=False).fit(RunTable.from_runs([*synthetic_sweep(), odd]))
    queries = RunTable.from_runs([make_report("a", n_params=1e9, n_tokens=1e11),
                                  make_report("b", n_params=1e8, n_tokens=2e9)])
    assert with_odd.base_loss(queries) == pytest.approx(clean.base_loss(queries), rel=0.02)


@pytest.mark.parametrize("far, nearest_fitted", [
    ((2e8, 2e13), (2e8, 2e10)),  # 100,000 tokens per parameter: the fitted at most 100
    ((1e7, 1e9), (2e8, 2e10)),  # smaller than any model fitted on
    ((7e10, 1.4e12), (8e8, 1.6e10)),  # larger
])
def test_past_the_fitted_sizes_the_optimum_moves_as_the_published_laws_do(far, nearest_fitted):
    """The fitted centre is linear in ln D: extrapolated to long training, its lr kept growing
    (30x the laws' at 100M params and 10T tokens), where the laws' slows (DeepSeek's blend)."""
    from predictor.prior import LawOptimum

    def law(n, d):
        values = LawOptimum(TrainingSpec(n_params=n, n_active_params=n, n_tokens=d)).values
        return np.log([values["lr"], values["batch_size_tokens"]])

    model = LossSurface(calibrate=False).fit(ALL)
    moved = np.subtract(model.centre(model.theta_, *far), model.centre(model.theta_, *nearest_fitted))
    assert moved == pytest.approx(law(*far) - law(*nearest_fitted), abs=1e-9)
    inside = (4e8, 2e10)  # within the fitted sizes: the fitted form itself
    x_n, x_d = np.log(inside[0] / N0), np.log(inside[1] / D0)
    t = model.theta_
    assert model.centre(t, *inside) == pytest.approx((t[0] + t[1] * x_n + t[2] * x_d,
                                                      t[3] + t[4] * x_n + t[5] * x_d))


def test_best_run_offset_is_where_the_best_run_lies_from_a_recommendation():
    from predictor.intervals import best_run_offset

    held = RunTable.from_runs([make_report("a", lr=1e-3, batch=1 << 20, loss=2.6),
                               make_report("b", lr=2e-3, batch=1 << 19, loss=2.5),
                               make_report("c", lr=8e-3, batch=1 << 19, status="diverged")])
    assert best_run_offset(held, 1e-3, 1 << 20) == pytest.approx(np.log([2.0, 0.5]))


def test_lr_and_batch_intervals_take_in_where_held_out_groups_best_runs_lay():
    """The bootstrap says how well the stored runs pin the fit down, not how far off a new
    spec's recommendation is: on the real sweep it covered the best run's lr in few groups."""
    model = LossSurface(n_boot=4).fit(ALL)  # calibrated by leaving each group out
    offsets = model.held_out_optimum_offsets()
    assert offsets.shape == (len(SWEEP_GROUPS), 2)
    spec = TrainingSpec(n_params=4e8, n_active_params=4e8, n_tokens=2e10)
    rec = ModelRecommender(model, ALL).recommend(spec, Pins(weight_decay=0.1))
    lo, hi = np.minimum(np.percentile(offsets, 10, axis=0), 0), np.maximum(np.percentile(offsets, 90, axis=0), 0)
    assert rec.lr_interval.lo <= rec.lr * np.exp(lo[0]) * (1 + 1e-9)
    assert rec.lr_interval.hi >= rec.lr * np.exp(hi[0]) * (1 - 1e-9)
    assert rec.batch_size_tokens_interval.lo <= rec.batch_size_tokens * np.exp(lo[1]) * (1 + 1e-9)
    assert rec.batch_size_tokens_interval.hi >= rec.batch_size_tokens * np.exp(hi[1]) * (1 - 1e-9)
    auto = AutoModel().fit(ALL)
    assert auto.held_out_optimum_offsets().shape == (len(SWEEP_GROUPS), 2)


def test_one_run_at_a_new_size_does_not_move_where_the_optimum_is_trusted():
    """It says its loss, not where its optimum lies: counted, it widened the box the learned
    optimum is trusted in, and the batch of far specs moved by 30%."""
    lone = make_report("lone", n_params=1e10, n_tokens=1e11, lr=1.6e-3, batch=1 << 21, loss=2.0)
    with_lone = RunTable.from_runs([*synthetic_sweep(), lone])
    clean, extended = (LossSurface(calibrate=False).fit(t) for t in (ALL, with_lone))
    assert extended.fitted_sizes_ == clean.fitted_sizes_
    far = TrainingSpec(n_params=7e10, n_active_params=7e10, n_tokens=1.4e12)
    before, after = (ModelRecommender(m, t).recommend(far, Pins(weight_decay=0.1))
                     for m, t in ((clean, ALL), (extended, with_lone)))
    assert after.batch_size_tokens == pytest.approx(before.batch_size_tokens, rel=0.05)


def test_the_intervals_take_in_the_laws_gradually_past_the_swept_sizes():
    """A sudden hull at the edge moved an interval end by 36% across a 0.5% step in size."""
    model = LossSurface(calibrate=False, n_boot=8).fit(ALL)
    recommender = ModelRecommender(model, ALL)
    edge = 2e8  # the smallest model swept, at 100 tokens per parameter
    lows = [recommender.recommend(TrainingSpec(n_params=n, n_active_params=n, n_tokens=100 * n),
                                  Pins(weight_decay=0.1)).lr_interval.lo
            for n in (edge * 1.001, edge / 1.001)]
    assert lows[1] == pytest.approx(lows[0], rel=0.02)


def test_a_pin_beyond_the_stored_sweeps_is_called_an_extrapolation(surface):
    """lr 1e-6 for a 1B model predicted a loss 5% above the optimum, with no word that no
    stored run was ever that far below its optimum."""
    spec = TrainingSpec(n_params=1e9, n_active_params=1e9, n_tokens=2e10)
    recommender = ModelRecommender(surface, without(ALL, HELD_OUT))
    lo, hi = recommender._pin_spans["lr"]
    optimum = LawOptimum(spec).values["lr"]

    def span_warnings(pins):
        return [w for w in recommender.recommend(spec, pins).warnings if "stored sweeps ran" in w]

    assert len(span_warnings(Pins(lr=optimum * lo / 3))) == 1
    assert span_warnings(Pins(lr=optimum * lo * 1.5)) == []
    assert span_warnings(Pins(lr=optimum)) == []
    assert span_warnings(Pins(lr=10.0)) == []  # the lr limit's warning says it
    b_lo, b_hi = recommender._pin_spans["batch_size_tokens"]
    batch = LawOptimum(spec).values["batch_size_tokens"]
    assert len(span_warnings(Pins(batch_size_tokens=round(batch * b_hi * 3 / 2048) * 2048))) == 1
