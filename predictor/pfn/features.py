"""What the network sees: runs as features relative to the published-law optimum, losses
normalised per task, and the choice of context runs for a query spec. numpy only; the same
code featurises the synthetic tasks in training and the stored runs at inference.

Per token (a context run or a query configuration), relative to the law optimum of the
token's own (N, D) group (predictor.prior.LawOptimum, vectorised here):
    u = ln(lr / lr*), v = ln(B / B*), l = ln(wd / wd*), q = f - f* (QAT fraction), quantized,
    dn, dna, dd = ln of the group's N, active N, D over the query spec's,
    prior_excess = Y_INPUT_SCALE * ln(1 + the published bowl's excess at u, v, l, q)
    (predictor/bowl.py, predictor/prior.py: what the prior alone predicts, for the network
    to correct), and the query spec's own scale (ln D, ln active N, ln tokens per parameter).
Context tokens add the normalised loss y, a diverged flag and a loss-unknown flag.

Context summary (summary.py): ridge regressions across the context's groups, on their
offsets (dn, dna, dd) from the query spec, of each group's level (its best r) and its optimum
(a soft argmin of u and v), evaluated at the query spec: the reference level and (u0, v0).
u_rel = u - u0, v_rel = v - v0 and shifted_excess (the published bowl around (u0, v0)) are
features too. These are deterministic functions of the context, computed identically on the
synthetic tasks, so the network learns how far to trust them.

Loss normalisation: r = ln(loss) - ln(base loss of the group under the Epoch law at Kumar's
effective N); y = r - the reference level. The network predicts the residual of y to the
anchor ln(1 + shifted_excess), the published bowl's shape around the summary's optimum: where
the network predicts a flat residual its mean is that smooth bowl, and what it learns from
the context bends it. Context tokens carry both y and that residual. Predictions are mapped
back to nats with the same reference and anchor.
"""

import math
from dataclasses import dataclass

import numpy as np

from predictor import laws
from predictor.bowl import TIMESCALE_CURVATURE_FRACTION, Bowl
from predictor.prior import QAT_CURVATURE
from predictor.pfn.summary import summarise

# Names the featurisation below: a checkpoint is valid only with the features it was trained on.
FEATURES_VERSION = "pfn-features@1"
CONTEXT_FEATURES = ("u", "v", "l", "q", "quantized", "prior_excess", "u_rel", "v_rel",
                    "shifted_excess", "dn", "dna", "dd", "scale_d", "scale_n", "scale_tpp", "y",
                    "y_resid", "diverged", "loss_unknown")
QUERY_FEATURES = CONTEXT_FEATURES[:15]
SHIFTED = CONTEXT_FEATURES.index("shifted_excess")
OFFSETS = slice(CONTEXT_FEATURES.index("dn"), CONTEXT_FEATURES.index("dd") + 1)
# Inputs are clipped to these magnitudes: a pin 400x off the optimum is as far as the search goes.
MAX_LOG_RATIO = 6.0
Y_INPUT_SCALE = 10.0  # y is a few hundredths near the optimum; scale it to order one
Y_INPUT_CLIP = (-1.0, 1.5)
# A diverged context run without a finite loss gets this y (about 2.5x the best loss).
DIVERGED_Y_FILL = 0.9
NO_QUANTIZATION_BITS = 16
# Not what the prior makes (screen): a group whose best loss, relative to the Epoch law at its
# size, is more than LEVEL_SPAN (ln) from the median group's; a completed run more than
# LEVEL_SPAN above its group's best. ln of the importers' DIVERGED_RATIO (tested equal); a
# prior task's groups stay within 0.23 of their median (3,000 tasks).
LEVEL_SPAN = math.log(1.5)
SIZE_SCALE = 3.0  # ln-sizes are divided by this
CENTRE_D, CENTRE_N, CENTRE_TPP = 1e10, 1e9, 50.0


@dataclass(frozen=True)
class LawPoint:
    """The published-law optimum and base loss per row (arrays)."""

    lr: np.ndarray
    batch: np.ndarray
    weight_decay: np.ndarray
    qat: np.ndarray
    base_loss: np.ndarray


def law_point(n_active, n_tokens, bits) -> LawPoint:
    """predictor.prior.LawOptimum, vectorised: Step Law lr (blended toward DeepSeek past 500
    tokens/param) and batch, timescale-rule weight decay, Dremov QAT fraction, and the Epoch
    base loss at Kumar's effective parameter count."""
    n = np.asarray(n_active, dtype=float)
    d = np.asarray(n_tokens, dtype=float)
    bits = np.asarray(bits, dtype=float)
    tpp = d / n
    k = laws.STEPLAW_LR.constants
    lr_steplaw = k["c"] * n ** k["alpha"] * d ** k["beta"]
    k = laws.DEEPSEEK_LR.constants
    lr_deepseek = k["c"] * (6.0 * n * d) ** k["gamma"]
    w = np.clip(np.log(np.maximum(tpp, 1e-12) / laws.BLEND_START_TPP)
                / np.log(laws.BLEND_FULL_TPP / laws.BLEND_START_TPP), 0.0, 1.0)
    lr = np.exp((1 - w) * np.log(lr_steplaw) + w * np.log(lr_deepseek))
    k = laws.STEPLAW_BATCH.constants
    batch = k["c"] * d ** k["beta"]
    k = laws.POWER_LINES_TIMESCALE.constants
    tau = k["c"] * tpp ** k["alpha"]
    quantized = bits < NO_QUANTIZATION_BITS
    s = d / (n * bits / 8)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.where(quantized & (s > 1.0),
                     np.exp(-laws.DREMOV_QAT.constants["k"] / np.log(np.maximum(s, 1.0 + 1e-12))), 0.0)
    return LawPoint(lr=lr, batch=batch, weight_decay=batch / (lr * tau * d), qat=f,
                    base_loss=epoch_loss(effective_params(n, bits), d))


def effective_params(n_active, bits) -> np.ndarray:
    gamma = laws.KUMAR_EFFECTIVE_PARAMS.constants["gamma"]
    bits = np.asarray(bits, dtype=float)
    factor = np.where(bits < NO_QUANTIZATION_BITS, 1 - np.exp(-bits / gamma), 1.0)
    return np.asarray(n_active, dtype=float) * factor


def epoch_loss(n, d) -> np.ndarray:
    k = laws.EPOCH_LOSS.constants
    return k["E"] + k["A"] / np.asarray(n) ** k["alpha"] + k["B"] / np.asarray(d) ** k["beta"]


@dataclass(frozen=True)
class Runs:
    """Runs (or query configurations) as arrays; loss NaN where unknown."""

    n_params: np.ndarray
    n_active: np.ndarray
    n_tokens: np.ndarray
    bits: np.ndarray
    lr: np.ndarray
    batch: np.ndarray
    weight_decay: np.ndarray
    qat: np.ndarray
    loss: np.ndarray
    diverged: np.ndarray

    def __len__(self) -> int:
        return len(self.lr)

    def take(self, index) -> "Runs":
        return Runs(**{k: v[index] for k, v in self.__dict__.items()})

    @classmethod
    def concat(cls, parts: list["Runs"]) -> "Runs":
        return cls(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in parts[0].__dict__})

    @property
    def completed(self) -> np.ndarray:
        return ~self.diverged & np.isfinite(self.loss)

    def spec_keys(self) -> np.ndarray:
        """(rows, 4): each row's spec, in the order of Spec's fields."""
        return np.stack([self.n_params, self.n_active, self.n_tokens, self.bits], axis=1)


@dataclass(frozen=True)
class Spec:
    n_params: float
    n_active: float
    n_tokens: float
    bits: float


def prior_excess(u, v, l, q, n_tokens) -> np.ndarray:
    """The published bowl's relative excess (predictor.bowl.Bowl.steplaw, QAT term of the prior)."""
    scale = np.asarray(n_tokens) / 1e10
    a, b = 0.0097 * scale ** -0.28, 0.0075 * scale ** -0.10
    bowl = Bowl.steplaw(1e10)
    c = TIMESCALE_CURVATURE_FRACTION * np.minimum(a, b)
    cross = bowl.rho * np.sqrt(a * b)
    e = a * u**2 + b * v**2 + c * l**2 + 2 * cross * u * v + 2 * c * u * l - 2 * c * v * l
    return np.maximum(e, 0.0) + QAT_CURVATURE * q**2


def _hyper_features(runs: Runs, spec: Spec, u0: float = 0.0, v0: float = 0.0
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(rows, 15) hyperparameter and size features, and the log residual r of the loss."""
    law = law_point(runs.n_active, runs.n_tokens, runs.bits)
    clip = lambda x: np.clip(x, -MAX_LOG_RATIO, MAX_LOG_RATIO)  # noqa: E731
    quantized = runs.bits < NO_QUANTIZATION_BITS
    n = len(runs)
    u = clip(np.log(runs.lr / law.lr))
    v = clip(np.log(runs.batch / law.batch))
    l = clip(np.log(np.maximum(runs.weight_decay, 1e-30) / law.weight_decay))  # noqa: E741
    q = np.where(quantized, runs.qat - law.qat, 0.0)
    cols = [
        u, v, l, q, quantized.astype(float),
        Y_INPUT_SCALE * np.log1p(prior_excess(u, v, l, q, runs.n_tokens)),
        u - u0, v - v0,
        Y_INPUT_SCALE * np.log1p(prior_excess(u - u0, v - v0, l, q, runs.n_tokens)),
        clip(np.log(runs.n_params / spec.n_params)),
        clip(np.log(runs.n_active / spec.n_active)),
        clip(np.log(runs.n_tokens / spec.n_tokens)),
        np.full(n, np.log(spec.n_tokens / CENTRE_D) / SIZE_SCALE),
        np.full(n, np.log(spec.n_active / CENTRE_N) / SIZE_SCALE),
        np.full(n, np.log(spec.n_tokens / spec.n_active / CENTRE_TPP) / SIZE_SCALE),
    ]
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.log(runs.loss) - np.log(law.base_loss)
    return np.stack(cols, axis=1), r


@dataclass(frozen=True)
class Episode:
    """Network inputs for one query spec: context (C, 19) and queries (Q, 15) features, and
    what maps the network's target back to a loss: loss = exp(target + query_log_anchor)."""

    context: np.ndarray
    queries: np.ndarray
    ref: float
    query_log_anchor: np.ndarray  # ref + ln(base loss) + ln(1 + shifted_excess), per query


@dataclass(frozen=True)
class Normalisation:
    """What an episode's features and losses are relative to, from its context: the context
    summary's reference level and optimum (u0, v0)."""

    ref: float
    u0: float
    v0: float


def context_features(context: Runs, spec: Spec) -> tuple[np.ndarray, Normalisation] | None:
    """The context's features (C, 19) and its normalisation; None when the context has no
    completed run to normalise losses by."""
    ctx_x, ctx_r = _hyper_features(context, spec)
    ok = context.completed & np.isfinite(ctx_r)
    if not ok.any():
        return None
    s = summarise(ctx_x[:, OFFSETS], ok, ctx_x[:, 0], ctx_x[:, 1], ctx_r)
    norm = Normalisation(ref=s.level, u0=s.u0, v0=s.v0)
    if s.u0 or s.v0:
        ctx_x, _ = _hyper_features(context, spec, s.u0, s.v0)
    y = ctx_r - norm.ref
    unknown = ~np.isfinite(y)
    y = np.where(unknown, DIVERGED_Y_FILL, y)
    resid = y - ctx_x[:, SHIFTED] / Y_INPUT_SCALE
    ctx = np.concatenate([ctx_x, np.stack([Y_INPUT_SCALE * np.clip(y, *Y_INPUT_CLIP),
                                           Y_INPUT_SCALE * np.clip(resid, *Y_INPUT_CLIP),
                                           context.diverged.astype(float),
                                           unknown.astype(float)], axis=1)], axis=1)
    return ctx.astype(np.float32), norm


def query_features(queries: Runs, spec: Spec, norm: Normalisation) -> tuple[np.ndarray, np.ndarray]:
    """The queries' features (Q, 15) and query_log_anchor, relative to a context's norm."""
    q_x, _ = _hyper_features(queries, spec, norm.u0, norm.v0)
    law = law_point(queries.n_active, queries.n_tokens, queries.bits)
    anchor = norm.ref + np.log(law.base_loss) + q_x[:, SHIFTED] / Y_INPUT_SCALE
    return q_x.astype(np.float32), anchor


def episode(context: Runs, queries: Runs, spec: Spec) -> Episode | None:
    """None when the context has no completed run to normalise losses by."""
    encoded = context_features(context, spec)
    if encoded is None:
        return None
    ctx, norm = encoded
    q_x, anchor = query_features(queries, spec, norm)
    return Episode(context=ctx, queries=q_x, ref=norm.ref, query_log_anchor=anchor)


def targets(queries: Runs, ep: Episode) -> np.ndarray:
    """y of the queries' losses (training targets)."""
    return np.log(queries.loss) - ep.query_log_anchor


def screen(runs: Runs) -> tuple[np.ndarray, np.ndarray]:
    """(rows to keep, diverged flags for all rows): the runs the network can read, as its
    prior would have made them. Left out: the groups whose best loss is more than LEVEL_SPAN
    from the median group's (weighted by completed runs), each relative to the Epoch law at
    its size: another corpus or a mistake. A loss of 999 reported at a new size moved the
    prediction at the nearest spec 7-fold: the network never saw such a group, and the
    context's level follows the nearest groups. Marked diverged: a completed run more than
    LEVEL_SPAN above its group's best, as the prior and the importers mark one. Groups
    without a completed run are kept as they are."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.log(runs.loss) - np.log(law_point(runs.n_active, runs.n_tokens, runs.bits).base_loss)
    ok = runs.completed & np.isfinite(r)
    if not ok.any():
        return np.arange(len(runs)), runs.diverged
    group = np.unique(runs.spec_keys(), axis=0, return_inverse=True)[1].ravel()
    level = np.full(group.max() + 1, np.nan)
    np.fmin.at(level, group[ok], r[ok])
    median = np.median(level[group[ok]])
    off_corpus = np.abs(level[group] - median) > LEVEL_SPAN  # False where level is NaN
    blown = ok & (r > level[group] + LEVEL_SPAN)
    return np.flatnonzero(~off_corpus), runs.diverged | blown


def group_distance(runs: Runs, spec: Spec) -> np.ndarray:
    """Euclidean distance in (ln N, ln active N, ln D) from each row's group to the spec."""
    return np.sqrt(np.log(runs.n_params / spec.n_params) ** 2
                   + np.log(runs.n_active / spec.n_active) ** 2
                   + np.log(runs.n_tokens / spec.n_tokens) ** 2)


def select_context(runs: Runs, spec: Spec, cap: int) -> np.ndarray:
    """Indices of the context for a spec: its own runs and those of the nearest groups, whole
    groups nearest first; the group that would pass the cap is thinned evenly (not randomly:
    the same store gives the same context). Rows with equal distance are one group."""
    if len(runs) == 0:
        return np.zeros(0, dtype=int)
    dist = np.round(group_distance(runs, spec), 9)
    out: list[np.ndarray] = []
    room = cap
    for dvalue in np.unique(dist):
        rows = np.flatnonzero(dist == dvalue)
        if len(rows) > room:
            rows = rows[np.linspace(0, len(rows) - 1, room).round().astype(int)] if room else rows[:0]
        out.append(rows)
        room -= len(rows)
        if room <= 0:
            break
    return np.concatenate(out)
