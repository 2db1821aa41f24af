"""benchmarks/decision_offsets.py: a correction fitted on groups whose recommendations all
miss the optimum the same way learns that miss (the figures in docs/benchmarks.md come from a
full run on the real sweep)."""

import numpy as np

from benchmarks.decision_offsets import corrected, fit_correction, hard_regret, inner_regret
from predictor.table import RunTable
from tests.factories import SWEEP_GROUPS, synthetic_sweep, true_optimum

MISS = (-1.2, 0.8)  # log2 lr, log2 batch: too low an lr, too large a batch


def groups_and_missed_recs():
    table = RunTable.from_runs(synthetic_sweep(noise=0.0))
    ids = table.group_ids()
    groups = [table.subset(ids == g) for g in np.unique(ids)]
    recs = []
    for g in groups:
        lr, batch = true_optimum(g.n_params[0], g.n_tokens[0])
        recs.append((np.log2(lr) + MISS[0], np.log2(batch) + MISS[1]))
    return groups, recs


def test_a_constant_miss_is_learned_and_undone():
    groups, recs = groups_and_missed_recs()
    assert len(groups) == len(SWEEP_GROUPS)
    params = fit_correction("M1", groups, recs)
    assert params[0] > 0.5 and params[1] < -0.4  # it moves back toward the optimum
    before = np.mean([hard_regret(g, r) for g, r in zip(groups, recs)])
    after = np.mean([hard_regret(g, corrected("M1", params, g, r)) for g, r in zip(groups, recs)])
    assert before > 1e-3 and after < 0.2 * before


def test_inner_selection_scores_the_correction_on_groups_it_did_not_fit():
    groups, recs = groups_and_missed_recs()
    assert inner_regret("M1", groups, recs) < 0.2 * inner_regret("M0", groups, recs)
