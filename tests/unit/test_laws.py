import math

import pytest

from benchmark_db.records import resolve_spec
from predictor import laws


def spec(n, d, **kw):
    return resolve_spec(n_params=n, n_tokens=d, **kw)


def test_steplaw_reproduces_published_formula():
    s = spec(1e9, 2e10)
    assert laws.STEPLAW_LR(s) == pytest.approx(1.79 * 1e9**-0.713 * 2e10**0.307, rel=1e-12)
    assert laws.STEPLAW_LR(s) == pytest.approx(9.96e-4, rel=1e-3)
    assert laws.STEPLAW_BATCH(s) == pytest.approx(0.58 * 2e10**0.571, rel=1e-12)


def test_deepseek_and_porian_values():
    s = spec(8e9, 15e12)
    assert laws.DEEPSEEK_LR(s) == pytest.approx(0.3118 * (6 * 8e9 * 15e12) ** -0.125)
    assert laws.DEEPSEEK_LR(s) == pytest.approx(3.25e-4, rel=0.01)
    assert laws.PORIAN_LR(s) == pytest.approx(3.7 * 8e9**-0.36)
    assert laws.PORIAN_BATCH(s) == pytest.approx(0.00037 * 8e9**0.703 * 2048)


def test_timescale_rule_agrees_with_steplaw_at_20_tokens_per_param():
    # Reference: at 20 tokens/param with wd 0.1, the timescale rule and Step Law agree within 4%.
    s = spec(1e9, 2e10)
    tau = laws.POWER_LINES_TIMESCALE(s)
    lr_from_timescale = laws.STEPLAW_BATCH(s) / (0.1 * tau * s.n_tokens)
    assert lr_from_timescale == pytest.approx(laws.STEPLAW_LR(s), rel=0.04)


@pytest.mark.parametrize("n, d, bits, expected", [
    (1.3e9, 1e11, 4, math.exp(-6.7297 / math.log(1e11 / (1.3e9 * 0.5)))),
    (1e9, 1e11, 16, 0.0),
    (1e9, 1e8, 4, 0.0),  # fewer than one token per parameter-byte: below the law's range
])
def test_qat_fraction(n, d, bits, expected):
    assert laws.DREMOV_QAT(spec(n, d, weight_bits=bits)) == pytest.approx(expected)


def test_qat_fraction_grows_with_tokens_per_param_byte():
    fractions = [laws.DREMOV_QAT(spec(1e9, d, weight_bits=4)) for d in (1e10, 1e11, 1e12, 1e13)]
    assert fractions == sorted(fractions) and 0.05 < fractions[0] < fractions[-1] < 1


def test_epoch_loss_and_effective_params():
    s = spec(1e9, 2e10)
    assert laws.EPOCH_LOSS(s) == pytest.approx(1.8172 + 482.01 / 1e9**0.3478 + 2085.43 / 2e10**0.3658)
    q = spec(1e9, 2e10, weight_bits=4)
    assert laws.KUMAR_EFFECTIVE_PARAMS(q) == pytest.approx(1e9 * (1 - math.exp(-4 / 2.6745)))
    assert laws.KUMAR_EFFECTIVE_PARAMS(s) == 1e9


def test_range_warnings_name_the_quantity():
    assert laws.STEPLAW_LR.range_warnings(spec(5e8, 1e10)) == []
    warnings = laws.STEPLAW_LR.range_warnings(spec(8e9, 15e12))
    assert len(warnings) == 2
    assert any("n_params" in w for w in warnings) and any("tokens_per_param" in w for w in warnings)


def test_long_training_blend_weight():
    assert laws.long_training_blend_weight(spec(1e9, 4e11)) == 0.0
    assert 0 < laws.long_training_blend_weight(spec(1e9, 1e12)) < 1
    assert laws.long_training_blend_weight(spec(1e9, 3e12)) == 1.0


def test_every_law_is_documented_data():
    for law in laws.ALL_LAWS:
        assert law.name and law.formula and law.source and law.version and law.constants
