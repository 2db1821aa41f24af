"""Zero-shot recommendations from the published laws alone.

The optimum comes from the laws (Step Law for lr and batch, the AdamW timescale rule with the
Power Lines optimum for weight decay, Dremov et al. for the QAT fraction); pins move the rest
to the conditional optimum of the quadratic bowl in bowl.py. An interval is the 80% range of
the optimum under the laws' parameter uncertainty, widened by the band over which the bowl
stays within NEAR_OPTIMAL_EXCESS of its minimum.
"""

import math
import sys

import numpy as np

from benchmark_db.errors import InvalidArgument
from benchmark_db.records import MAX_BATCH_SEQUENCES, Architecture, Pins, TrainingSpec
from predictor import laws
from predictor.bowl import COORDS, Bowl
from predictor.recommendation import Interval, Recommendation, Source, whole_sequences

PRIOR_VERSION = "prior@1"
Z80 = 1.2816  # standard-normal quantile of a central 80% interval
NEAR_OPTIMAL_EXCESS = 5e-4  # relative loss: the Step Law grid's noise level
QAT_CURVATURE = 0.025  # excess per unit (f - f*)^2; assumed: 0.2 off costs about 0.1%
# Geometric centre of Step Law's fitted range: exponent uncertainty grows away from it.
STEPLAW_CENTRE_N, STEPLAW_CENTRE_D = 4.6e8, 2.4e10
# Log-ratios to the optimum beyond which a pin is clamped in the bowl (a factor of e^6 ~ 400).
MAX_LOG_RATIO = 6.0
# Runs diverge from about this multiple of the optimal lr (the reference's sweeps).
DIVERGENCE_LR_FACTOR = 6.0


class PriorRecommender:
    """Recommendations from the published laws; no data needed."""

    version = PRIOR_VERSION

    def recommend(self, spec: TrainingSpec, pins: Pins, *, warn_divergence: bool = True
                  ) -> Recommendation:
        """`warn_divergence=False` leaves the warning on a pinned lr past DIVERGENCE_LR_FACTOR to
        a learned model with its own lr limit, which knows better where runs diverge."""
        check_pins(spec, pins)
        optimum = LawOptimum(spec)
        warnings = list(optimum.warnings) + _partial_sequence_warnings(spec, pins)
        in_bowl, z = self._conditional(spec, pins, optimum, warnings, warn_divergence)
        bowl = Bowl.steplaw(spec.n_tokens)
        pinned = _pinned_names(pins)

        values, intervals = {}, {}
        for i, name in enumerate(COORDS):
            if name in pinned:
                values[name] = getattr(pins, name)
                intervals[name] = Interval.point(values[name])
                continue
            value = optimum.values[name] * math.exp(z[i])
            half = math.hypot(Z80 * optimum.log_sd[name],
                              math.sqrt(NEAR_OPTIMAL_EXCESS / bowl.profile_curvature(i, in_bowl)))
            values[name] = value
            intervals[name] = Interval(lo=value * math.exp(-half), hi=value * math.exp(half))
        if "batch_size_tokens" not in pinned:
            rounded = whole_sequences(values["batch_size_tokens"], spec.seq_len)
            scale = rounded / values["batch_size_tokens"]
            if scale > 1.5:  # rounding to whole sequences moves a batch by less than that
                warnings.append(f"batch_size_tokens: one sequence of seq_len {spec.seq_len} is "
                                f"{scale:.3g}x the {values['batch_size_tokens']:.3g} tokens the laws "
                                "ask for; the batch is one sequence")
            if "weight_decay" not in pinned:  # keep the AdamW timescale of the rounded batch
                values["weight_decay"] *= scale
                intervals["weight_decay"] = Interval(lo=intervals["weight_decay"].lo * scale,
                                                     hi=intervals["weight_decay"].hi * scale)
            values["batch_size_tokens"] = rounded

        qat, qat_interval = self._qat(spec, pins, optimum)
        # At the values recommended, as PredictLoss says: pins past MAX_LOG_RATIO, and a batch
        # rounded up to one sequence at a tiny spec, are not where z put them.
        loss = float(law_loss(optimum, *(np.array([values[n]]) for n in COORDS), np.array([qat]))[0])
        loss_half = Z80 * laws.EPOCH_LOSS.sd["relative"]
        return Recommendation(
            spec=spec,
            lr=values["lr"], lr_interval=intervals["lr"],
            batch_size_tokens=values["batch_size_tokens"],
            batch_size_tokens_interval=intervals["batch_size_tokens"],
            weight_decay=values["weight_decay"], weight_decay_interval=intervals["weight_decay"],
            qat_fraction=qat, qat_fraction_interval=qat_interval,
            predicted_loss=loss,
            predicted_loss_interval=Interval(lo=loss * math.exp(-loss_half),
                                             hi=loss * math.exp(loss_half)),
            sources=tuple(_sources(optimum, pins)),
            warnings=tuple(warnings),
            model_versions=(PRIOR_VERSION,),
        )

    @staticmethod
    def _conditional(spec, pins, optimum, warnings, warn_divergence) -> tuple[set[int], np.ndarray]:
        pinned = {}
        for i, name in enumerate(COORDS):
            value = getattr(pins, name)
            if value is None:
                continue
            if value == 0:  # only weight decay can be 0: no timescale, nothing to condition on
                warnings.append("weight_decay = 0: the prior's timescale rule says nothing about "
                                "training without weight decay; lr and batch are its optimum "
                                "for the law's weight decay")
                continue
            # A subnormal pin over a large optimum underflows to 0: the smallest normal float
            # instead, whose log (-708) is clamped below as any far ratio is.
            ratio = math.log(max(value / optimum.values[name], sys.float_info.min))
            if (warn_divergence and name == "lr"
                    and value > DIVERGENCE_LR_FACTOR * optimum.values["lr"]):
                warnings.append(f"pinned lr = {value:.3g} is over {DIVERGENCE_LR_FACTOR:g}x the "
                                f"prior optimum {optimum.values['lr']:.3g}, past which runs "
                                "diverge in the reference's sweeps: the run may diverge, and "
                                "the loss predicted for it assumes it does not")
            if abs(ratio) > MAX_LOG_RATIO:
                warnings.append(f"pinned {name} = {value:.3g} is more than e^{MAX_LOG_RATIO:g} "
                                f"from the prior optimum {optimum.values[name]:.3g}; the "
                                "conditional optimum of the rest is that at the clamped ratio")
                ratio = math.copysign(MAX_LOG_RATIO, ratio)
            pinned[i] = ratio
        return set(pinned), Bowl.steplaw(spec.n_tokens).conditional_optimum(pinned)

    @staticmethod
    def _qat(spec, pins, optimum) -> tuple[float, Interval]:
        if pins.qat_fraction is not None:
            return pins.qat_fraction, Interval.point(pins.qat_fraction)
        if not spec.quantized:
            return 0.0, Interval.point(0.0)
        f = optimum.qat_fraction
        half = math.hypot(Z80 * laws.DREMOV_QAT.sd["f"], math.sqrt(NEAR_OPTIMAL_EXCESS / QAT_CURVATURE))
        return f, Interval(lo=max(0.0, f - half), hi=min(1.0, f + half))


class LawOptimum:
    """The unconditional optimum of the published laws for a spec, with log-scale sds."""

    def __init__(self, spec: TrainingSpec):
        self.spec = spec
        self.warnings: list[str] = laws.STEPLAW_LR.range_warnings(spec)
        self.blend_weight = laws.long_training_blend_weight(spec)
        lr_steplaw, lr_deepseek = laws.STEPLAW_LR(spec), laws.DEEPSEEK_LR(spec)
        w = self.blend_weight
        lr = math.exp((1 - w) * math.log(lr_steplaw) + w * math.log(lr_deepseek))
        batch = laws.STEPLAW_BATCH(spec)
        timescale = laws.POWER_LINES_TIMESCALE(spec)
        self.values = {
            "lr": lr,
            "batch_size_tokens": batch,
            "weight_decay": batch / (lr * timescale * spec.n_tokens),
        }
        lr_sd = math.hypot(_steplaw_sd(laws.STEPLAW_LR, spec),
                           w * abs(math.log(lr_steplaw / lr_deepseek)) / 2)
        batch_sd = _steplaw_sd(laws.STEPLAW_BATCH, spec)
        self.log_sd = {
            "lr": lr_sd,
            "batch_size_tokens": batch_sd,
            "weight_decay": math.sqrt(lr_sd**2 + batch_sd**2
                                      + laws.POWER_LINES_TIMESCALE.sd["log_tau"] ** 2),
        }
        if w > 0:
            self.warnings.append(
                f"{spec.tokens_per_param:.0f} tokens per parameter is beyond "
                f"{laws.BLEND_START_TPP:.0f}, where Step Law's lr grows too fast with data: "
                f"blended with DeepSeek's compute law (weight {w:.2f}) and the interval widened"
            )
        if spec.architecture is Architecture.MOE:
            self.warnings.append("moe: the dense laws are applied to the active parameters")
        self.qat_fraction = laws.DREMOV_QAT(spec)
        n_eff = laws.KUMAR_EFFECTIVE_PARAMS(spec)
        self.base_loss = laws.EPOCH_LOSS(spec.model_copy(update={"n_active_params": n_eff}))


def _steplaw_sd(law: laws.Law, spec: TrainingSpec) -> float:
    """sd of ln(value): intercept at the fit's centre plus exponent sds times the distance."""
    sd = law.sd
    return math.sqrt(
        sd["log_c_at_centre"] ** 2
        + (sd.get("alpha", 0.0) * math.log(spec.n_active_params / STEPLAW_CENTRE_N)) ** 2
        + (sd.get("beta", 0.0) * math.log(spec.n_tokens / STEPLAW_CENTRE_D)) ** 2
    )


def _partial_sequence_warnings(spec: TrainingSpec, pins: Pins) -> list[str]:
    """A pinned batch is kept as given; its batch_size_sequences is rounded, so say so when the
    two disagree by more than 1% (1M tokens is 488 sequences of 2048 to 0.06%: no warning)."""
    batch = pins.batch_size_tokens
    if batch is None or abs(whole_sequences(batch, spec.seq_len) / batch - 1) <= 0.01:
        return []
    sequences = round(batch / spec.seq_len)
    return [f"pins.batch_size_tokens = {batch:g} is not a whole number of sequences of seq_len "
            f"{spec.seq_len}: batch_size_sequences says {sequences} ({sequences * spec.seq_len} "
            "tokens)"]


def check_pins(spec: TrainingSpec, pins: Pins) -> None:
    """Pins that contradict the spec are rejected, not silently ignored."""
    if pins.batch_size_tokens is not None and pins.batch_size_tokens > spec.n_tokens:
        raise InvalidArgument.single(
            "pins.batch_size_tokens",
            f"larger than spec.n_tokens ({pins.batch_size_tokens:g} > {spec.n_tokens:g})",
        )
    # A pinned batch is returned as is, in tokens and in whole sequences: it must be at least
    # one sequence and no more sequences than batch_size_sequences can carry.
    if pins.batch_size_tokens is not None and pins.batch_size_tokens < spec.seq_len:
        raise InvalidArgument.single(
            "pins.batch_size_tokens",
            f"less than one sequence of spec.seq_len {spec.seq_len} tokens "
            f"(got {pins.batch_size_tokens:g})",
        )
    if (pins.batch_size_tokens is not None
            and round(pins.batch_size_tokens / spec.seq_len) > MAX_BATCH_SEQUENCES):
        raise InvalidArgument.single(
            "pins.batch_size_tokens",
            f"more than {MAX_BATCH_SEQUENCES} sequences of spec.seq_len {spec.seq_len} tokens "
            f"(got {pins.batch_size_tokens:g})",
        )
    if pins.qat_fraction and not spec.quantized:
        raise InvalidArgument.single(
            "pins.qat_fraction",
            f"must be 0 or unset when spec.weight_bits is {spec.weight_bits} (no quantization)",
        )


def law_loss(optimum: "LawOptimum", lr, batch, weight_decay, qat_fraction) -> np.ndarray:
    """The prior's loss at each point of one spec: base loss times (1 + bowl excess + QAT
    excess). A weight decay of 0 has no timescale: its term is that of the optimal one (as
    for the recommendation with weight decay pinned to 0)."""
    u = np.log(lr / optimum.values["lr"])
    v = np.log(batch / optimum.values["batch_size_tokens"])
    decays = weight_decay > 0
    w = np.where(decays, np.log(np.maximum(np.where(decays, weight_decay, 1.0)  # as in _conditional
                                           / optimum.values["weight_decay"], sys.float_info.min)),
                 v - u)
    excess = Bowl.steplaw(optimum.spec.n_tokens).excess(np.stack([u, v, w], axis=-1))
    return optimum.base_loss * (1 + excess + QAT_CURVATURE * (qat_fraction - optimum.qat_fraction) ** 2)


def _pinned_names(pins: Pins) -> set[str]:
    return {name for name, value in pins.model_dump().items() if value is not None}


def _sources(optimum: LawOptimum, pins: Pins) -> list[Source]:
    pinned = _pinned_names(pins)
    by_field = {
        "lr": [laws.STEPLAW_LR] + ([laws.DEEPSEEK_LR] if optimum.blend_weight > 0 else []),
        "batch_size_tokens": [laws.STEPLAW_BATCH],
        "weight_decay": [laws.POWER_LINES_TIMESCALE],
        "qat_fraction": [laws.DREMOV_QAT],
        "predicted_loss": [laws.EPOCH_LOSS],
    }
    out = []
    for field, field_laws in by_field.items():
        if field in pinned:
            out.append(Source(field=field, name="pinned", version="", detail="fixed by the caller"))
            continue
        out += [Source(field=field, name=law.name, version=law.version, detail=law.detail)
                for law in field_laws]
        if pinned and field != "qat_fraction":
            out.append(Source(field=field, name="prior_bowl", version=PRIOR_VERSION,
                              detail="conditional optimum given " + ", ".join(sorted(pinned))))
    return out
