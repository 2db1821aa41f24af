"""Published scaling laws, stored as data so every recommendation can name what produced it.

Notation as in the reference: N = non-embedding parameters (active ones for MoE), D = training
tokens, C = 6 N D, B = global batch in tokens, eta = peak AdamW learning rate, lambda =
decoupled weight decay, f = QAT fraction, b = weight bits.
"""

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from benchmark_db.records import MAX_WEIGHT_DECAY, TrainingSpec


@dataclass(frozen=True)
class Law:
    name: str
    quantity: str
    formula: str
    constants: Mapping[str, float]
    units: str
    source: str
    version: str
    # Quantity -> (low, high) over which the law was fitted; see `range_warnings`.
    valid: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    # Standard deviations of constants where the source gives (or we assume) them.
    sd: Mapping[str, float] = field(default_factory=dict)
    evaluate_fn: Callable[[Mapping[str, float], TrainingSpec], float] = field(
        default=lambda k, s: math.nan, repr=False, compare=False
    )

    def __call__(self, spec: TrainingSpec) -> float:
        return self.evaluate_fn(self.constants, spec)

    @property
    def detail(self) -> str:
        return f"{self.formula} ({self.source})"

    def range_warnings(self, spec: TrainingSpec) -> list[str]:
        values = {"n_params": spec.n_active_params, "tokens_per_param": spec.tokens_per_param}
        out = []
        for quantity, (lo, hi) in self.valid.items():
            value = values[quantity]
            if not lo <= value <= hi:
                out.append(
                    f"{self.name}: {quantity} = {value:.3g} is outside the range the law was "
                    f"fitted on ({lo:.3g} to {hi:.3g}); its value is an extrapolation"
                )
        return out


STEPLAW_RANGE = {"n_params": (2e8, 1.1e9), "tokens_per_param": (19.0, 470.0)}

STEPLAW_LR = Law(
    name="steplaw_lr",
    quantity="lr",
    formula="eta* = 1.79 * N^-0.713 * D^0.307",
    constants={"c": 1.79, "alpha": -0.713, "beta": 0.307},
    units="AdamW peak lr; cosine to 1e-5; seq 2048",
    source="Li et al. 2025, Step Law",
    version="li2025",
    valid=STEPLAW_RANGE,
    # Exponent sds are the paper's bootstrap; the intercept sd (at the centre of the fitted
    # range) is our assumption, from the scatter of group optima around the law.
    sd={"alpha": 0.03, "beta": 0.019, "log_c_at_centre": 0.15},
    evaluate_fn=lambda k, s: k["c"] * s.n_active_params ** k["alpha"] * s.n_tokens ** k["beta"],
)

STEPLAW_BATCH = Law(
    name="steplaw_batch",
    quantity="batch_size_tokens",
    formula="B* = 0.58 * D^0.571 tokens",
    constants={"c": 0.58, "beta": 0.571},
    units="tokens",
    source="Li et al. 2025, Step Law",
    version="li2025",
    valid=STEPLAW_RANGE,
    sd={"beta": 0.03, "log_c_at_centre": 0.2},  # assumed: the paper gives no sd for these
    evaluate_fn=lambda k, s: k["c"] * s.n_tokens ** k["beta"],
)

DEEPSEEK_LR = Law(
    name="deepseek_lr",
    quantity="lr",
    formula="eta* = 0.3118 * C^-0.125, C = M*D",
    constants={"c": 0.3118, "gamma": -0.125},
    units="M approximated by 6N (attention FLOPs ignored)",
    source="DeepSeek LLM, 2024",
    version="deepseek2024",
    evaluate_fn=lambda k, s: k["c"] * s.compute_flops ** k["gamma"],
)

DEEPSEEK_BATCH = Law(
    name="deepseek_batch",
    quantity="batch_size_tokens",
    formula="B* = 0.2920 * C^0.3271 tokens",
    constants={"c": 0.2920, "gamma": 0.3271},
    units="tokens",
    source="DeepSeek LLM, 2024",
    version="deepseek2024",
    evaluate_fn=lambda k, s: k["c"] * s.compute_flops ** k["gamma"],
)

PORIAN_LR = Law(
    name="porian_lr",
    quantity="lr",
    formula="eta* = 3.7 * N^-0.36",
    constants={"c": 3.7, "alpha": -0.36},
    units="AdamW with tuned beta2",
    source="Porian et al. 2024",
    version="porian2024",
    evaluate_fn=lambda k, s: k["c"] * s.n_active_params ** k["alpha"],
)

PORIAN_BATCH = Law(
    name="porian_batch",
    quantity="batch_size_tokens",
    formula="B* = 0.00037 * N^0.703 sequences",
    constants={"c": 0.00037, "alpha": 0.703},
    units="sequences of seq_len tokens",
    source="Porian et al. 2024",
    version="porian2024",
    evaluate_fn=lambda k, s: k["c"] * s.n_active_params ** k["alpha"] * s.seq_len,
)

POWER_LINES_TIMESCALE = Law(
    name="power_lines_timescale",
    quantity="adamw_timescale",
    formula="tau* = 1.084 * (D/N)^-0.527; lambda* = B / (eta * tau* * D)",
    constants={"c": 1.084, "alpha": -0.527},
    units="fraction of training",
    source="Bergsma et al. 2025, Power Lines; timescale of Wang and Aitchison",
    version="bergsma2025",
    sd={"log_tau": 0.3},  # medium confidence in the reference: assumed sd
    evaluate_fn=lambda k, s: k["c"] * s.tokens_per_param ** k["alpha"],
)

DREMOV_QAT = Law(
    name="dremov_qat_fraction",
    quantity="qat_fraction",
    formula="f* = exp(-6.7297 / ln S), S = D / (N * b / 8)",
    constants={"k": 6.7297},
    units="fraction of training tokens",
    source="Dremov et al. 2025, Compute-Optimal QAT",
    version="dremov2025",
    sd={"f": 0.09},  # the paper's fit error in f
    evaluate_fn=lambda k, s: _qat_fraction(k["k"], s),
)

EPOCH_LOSS = Law(
    name="epoch_chinchilla_loss",
    quantity="loss",
    formula="L = 1.8172 + 482.01 / N^0.3478 + 2085.43 / D^0.3658",
    constants={"E": 1.8172, "A": 482.01, "alpha": 0.3478, "B": 2085.43, "beta": 0.3658},
    units="nats per token",
    source="Chinchilla form, Epoch AI refit; the level of Chinchilla's data: another corpus or "
           "tokenizer shifts it (the Step Law sweep's best losses are 11-15% lower)",
    version="epoch2024",
    # Absolute losses transfer poorly across corpora and tokenizers: assumed relative sd.
    sd={"relative": 0.03},
    evaluate_fn=lambda k, s: k["E"] + k["A"] / s.n_active_params ** k["alpha"]
    + k["B"] / s.n_tokens ** k["beta"],
)

KUMAR_EFFECTIVE_PARAMS = Law(
    name="kumar_effective_params",
    quantity="n_params",
    formula="N_eff = N * (1 - exp(-b / 2.6745))",
    constants={"gamma": 2.6745},
    units="parameters",
    source="Kumar et al. 2024, Scaling Laws for Precision",
    version="kumar2024",
    evaluate_fn=lambda k, s: s.n_active_params * (1 - math.exp(-s.weight_bits / k["gamma"]))
    if s.quantized else s.n_active_params,
)


def _qat_fraction(k: float, spec: TrainingSpec) -> float:
    if not spec.quantized:
        return 0.0
    tokens_per_param_byte = spec.n_tokens / (spec.n_active_params * spec.weight_bits / 8)
    if tokens_per_param_byte <= 1.0:
        return 0.0  # the law's ln S is <= 0 here: far below any data it was fitted on
    return math.exp(-k / math.log(tokens_per_param_byte))


# Beyond this many tokens per parameter Step Law's positive D exponent extrapolates badly
# (reference: 8B params on 15T tokens gives ~6x the lr such runs use): blend toward DeepSeek's
# law, whose lr falls with compute, reaching it fully at BLEND_FULL_TPP.
BLEND_START_TPP = 500.0
BLEND_FULL_TPP = 2000.0


def timescale_rule_weight_decay(spec: TrainingSpec, lr, batch_size_tokens):
    """The weight decay that puts the AdamW timescale B / (lr wd D) at Power Lines' optimum, for
    numbers or arrays of lr and batch (a tiny lr asks for a huge decay)."""
    return batch_size_tokens / (lr * POWER_LINES_TIMESCALE(spec) * spec.n_tokens)


def timescale_weight_decay(spec: TrainingSpec, lr, batch_size_tokens):
    """The timescale rule's weight decay, at most MAX_WEIGHT_DECAY: what a run can report."""
    return np.minimum(timescale_rule_weight_decay(spec, lr, batch_size_tokens), MAX_WEIGHT_DECAY)


def clamped_weight_decay_warnings(spec: TrainingSpec, lr: float, batch_size_tokens: float
                                  ) -> list[str]:
    """The warning of a recommendation whose free weight decay was clamped, if it was."""
    asked = timescale_rule_weight_decay(spec, lr, batch_size_tokens)
    if asked <= MAX_WEIGHT_DECAY:
        return []
    return [f"weight_decay: the timescale rule asks for {asked:.3g} at this lr and batch, more "
            f"than a run can use ({MAX_WEIGHT_DECAY:g} at most); {MAX_WEIGHT_DECAY:g} is "
            "recommended instead"]


def long_training_blend_weight(spec: TrainingSpec) -> float:
    """Weight of DeepSeek's lr law against Step Law's: 0 up to 500 tokens/param, 1 from 2000."""
    tpp = spec.tokens_per_param
    if tpp <= BLEND_START_TPP:
        return 0.0
    return min(1.0, math.log(tpp / BLEND_START_TPP) / math.log(BLEND_FULL_TPP / BLEND_START_TPP))


ALL_LAWS = (
    STEPLAW_LR, STEPLAW_BATCH, DEEPSEEK_LR, DEEPSEEK_BATCH, PORIAN_LR, PORIAN_BATCH,
    POWER_LINES_TIMESCALE, DREMOV_QAT, EPOCH_LOSS, KUMAR_EFFECTIVE_PARAMS,
)
