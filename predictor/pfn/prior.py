"""The PFN's prior: a sampler of whole synthetic tasks (several (N, D) groups of one corpus and
one training setup, each with a sweep of runs), drawn around the published laws. docs/pfn.md
documents every choice and its source; the defaults below are set from the reference
(shared/reference/scaling-laws.md), predictor/laws.py and the properties the Step Law dataset
README quotes, never from backtest results.

Per task:
- base loss L(N, D) = E + T_N (N_eff/1e9)^-alpha + T_D (D/1e10)^-beta around the Epoch refit
  (absolute losses differ across corpora), with a small per-group level jitter;
- the optimum: lr* and B* from the laws (features.law_point) times exp(task offset + exponent
  offsets times the log-distance from Step Law's fitted centre + group jitter), the timescale
  optimum tau* with a task offset, the QAT optimum f* with the Dremov fit error;
- the bowl (relative excess) in u, v, t = ln(tau/tau*) and f - f*:
      s(u) [a u^2 + b v^2 + 2 rho sqrt(ab) u v] - c (v-u)^2 + c t^2 + k_q (f - f*)^2 + cliff,
  with a, b, rho from the reference's fit (a, b varying with D) perturbed per task, the
  timescale split of predictor/bowl.py, asymmetry s(u) = exp(kappa tanh u), and a cliff that
  rises before the divergence boundary u_div (about ln 6, tilted in v);
- divergence: P(diverged) = Phi((u - u_div) / width) (a normal tail: runs near the optimum do
  not diverge by chance); a diverged run reports 1.6-3.2x the
  group's best loss (sometimes no loss), and, as the importer does, a run above 1.5x the best
  counts as diverged;
- noise: relative sd sigma0 (1 + excess / e0), with rare upward spikes;
- designs per group: grids (full or thinned), a handful of runs near the optimum, random
  points; weight decay fixed per task (often 0.1) or varied; QAT fraction fixed or varied.
"""

import math
from dataclasses import asdict, dataclass, field, fields

import numpy as np
from scipy.special import ndtr

from predictor import laws
from predictor.pfn.features import (NO_QUANTIZATION_BITS, Runs, effective_params, law_point)
from predictor.prior import QAT_CURVATURE, STEPLAW_CENTRE_D, STEPLAW_CENTRE_N

PRIOR_VERSION = "pfn-prior@1"
DESIGNS = ("grid", "thinned_grid", "near_optimum", "random")


@dataclass(frozen=True)
class PriorConfig:
    version: str = PRIOR_VERSION
    # --- sizes: a ladder of model sizes, each trained on a few token budgets
    n_active_range: tuple[float, float] = (5e7, 2e10)
    sizes_per_task: tuple[int, int] = (1, 5)
    size_ratio_range: tuple[float, float] = (1.25, 2.5)
    budgets_per_size: tuple[int, int] = (1, 4)
    tpp_low_range: tuple[float, float] = (5.0, 200.0)
    tpp_span_max: float = 25.0
    max_groups: int = 10
    moe_prob: float = 0.15
    moe_ratio_range: tuple[float, float] = (2.0, 16.0)
    quantized_prob: float = 0.25
    bits_choices: tuple[int, ...] = (2, 3, 4, 8)
    # --- base loss around the Epoch refit (ln sds; exponent sds absolute)
    loss_e_log_sd: float = 0.12
    loss_terms_log_sd: float = 0.35
    loss_exponent_sd: float = 0.05
    group_level_sd_median: float = 0.003
    # --- optimum: sds of ln offsets from the laws (laws.py sds), widened per task by a
    # lognormal factor (cross-corpus transfer is worse than a bootstrap within one study)
    lr_log_c_sd: float = laws.STEPLAW_LR.sd["log_c_at_centre"]
    lr_alpha_sd: float = laws.STEPLAW_LR.sd["alpha"]
    lr_beta_sd: float = laws.STEPLAW_LR.sd["beta"]
    batch_log_c_sd: float = laws.STEPLAW_BATCH.sd["log_c_at_centre"]
    batch_beta_sd: float = laws.STEPLAW_BATCH.sd["beta"]
    tau_log_sd: float = laws.POWER_LINES_TIMESCALE.sd["log_tau"]
    qat_f_sd: float = laws.DREMOV_QAT.sd["f"]
    offset_widen_median: float = 1.5
    offset_widen_log_sd: float = 0.4
    group_jitter_lr_median: float = 0.10
    group_jitter_batch_median: float = 0.15
    group_jitter_log_sd: float = 0.5
    # --- bowl: the reference's Step Law fit, perturbed per task
    a0: float = 0.0097
    a_exponent: float = -0.28
    b0: float = 0.0075
    b_exponent: float = -0.10
    rho: float = -0.34
    curvature_log_sd: float = 0.3
    curvature_exponent_sd: float = 0.08
    rho_sd: float = 0.12
    group_curvature_log_sd: float = 0.1
    timescale_fraction_range: tuple[float, float] = (0.05, 0.5)
    asymmetry_mean: float = 0.3
    asymmetry_sd: float = 0.3
    qat_curvature: float = QAT_CURVATURE
    qat_curvature_log_sd: float = 0.5
    # --- divergence cliff (reference: runs diverge past about 6x the optimal lr)
    divergence_u: float = math.log(6.0)
    divergence_u_sd: float = 0.25
    divergence_batch_slope_sd: float = 0.15
    divergence_width_range: tuple[float, float] = (0.05, 0.25)
    cliff_height_median: float = 0.01
    cliff_height_log_sd: float = 0.7
    cliff_scale_range: tuple[float, float] = (0.2, 0.4)
    diverged_loss_ratio: tuple[float, float] = (1.6, 3.2)
    diverged_loss_missing_prob: float = 0.1
    diverged_ratio: float = 1.5  # benchmark_db.importers.rows.DIVERGED_RATIO
    # --- noise (README: best vs second best differ by a median 0.0016 nats, ~0.07%)
    noise_median: float = 4e-4
    noise_log_sd: float = 0.4
    noise_excess_scale: float = 0.05
    spike_prob: float = 0.02
    spike_scale: float = 5.0
    # --- designs (README: ~12 lrs a factor sqrt 2 apart, ~10 batch sizes, 47-120 runs/group)
    design_probs: tuple[float, ...] = (0.45, 0.2, 0.2, 0.15)
    grid_lr_span: tuple[float, float] = (2.5, 4.5)  # ln(highest lr / lowest lr)
    grid_lr_ratios: tuple[float, ...] = (2 ** 0.25, 2 ** 0.5, 2 ** 0.5, 2 ** 0.5, 2.0)
    grid_lr_top_u: tuple[float, float] = (0.5, 2.7)
    grid_batch_count: tuple[int, int] = (3, 10)
    grid_batch_ratios: tuple[float, ...] = (2 ** 0.5, 2.0, 2.0)
    grid_batch_centre_sd: float = 0.5
    grid_keep_range: tuple[float, float] = (0.7, 1.0)
    thinned_keep_range: tuple[float, float] = (0.15, 0.6)
    near_count: tuple[int, int] = (2, 12)
    near_guess_sd: float = 0.3
    near_spread_sd: float = 0.4
    random_count: tuple[int, int] = (5, 60)
    random_box_u: tuple[float, float] = (-3.0, 2.5)
    random_box_v: tuple[float, float] = (-2.5, 2.5)
    wd_fixed_prob: float = 0.75
    wd_steplaw_prob: float = 0.6  # of fixed: 0.1, the value most sweeps use
    wd_fixed_range: tuple[float, float] = (0.01, 0.3)
    wd_varied_log_half_range: float = 1.5
    qat_fixed_prob: float = 0.5

    @classmethod
    def from_dict(cls, raw: dict) -> "PriorConfig":
        kinds = {f.name: f.type for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()
                      if k in kinds})

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Group:
    """One (N, D) group of a task: its true optimum and surface parameters, and its runs."""

    n_params: float
    n_active: float
    n_tokens: float
    bits: int
    lr_opt: float
    batch_opt: float
    wd_opt: float
    qat_opt: float
    base_loss: float
    a: float
    b: float
    rho: float
    c: float
    noise: float
    runs: Runs | None = None


@dataclass
class Task:
    groups: list[Group]
    kappa: float
    qat_curvature: float
    div_u: float
    div_slope: float
    div_width: float
    cliff_height: float
    cliff_scale: float
    wd_mode: tuple  # ("fixed", value) or ("varied", half_range)
    qat_fixed: bool
    config: PriorConfig = field(repr=False, default_factory=PriorConfig)

    def excess(self, g: Group, lr, batch, wd, qat) -> tuple[np.ndarray, np.ndarray]:
        """Noise-free relative excess over the group's base loss, and u - u_div."""
        u = np.log(lr / g.lr_opt)
        v = np.log(batch / g.batch_opt)
        t = v - u - np.log(np.maximum(wd, 1e-30) / g.wd_opt)
        t = np.clip(t, -8.0, 8.0)
        m = g.a * u ** 2 + g.b * v ** 2 + 2 * g.rho * math.sqrt(g.a * g.b) * u * v
        e = np.exp(self.kappa * np.tanh(u)) * m - g.c * (v - u) ** 2 + g.c * t ** 2
        e = e + self.qat_curvature * (qat - g.qat_opt) ** 2 * (g.bits < NO_QUANTIZATION_BITS)
        to_edge = u - (self.div_u + self.div_slope * v)
        e = e + np.minimum(self.cliff_height * np.exp(to_edge / self.cliff_scale), 1.0)
        return np.maximum(e, 0.0), to_edge

    def sample(self, g: Group, lr, batch, wd, qat, rng: np.random.Generator) -> Runs:
        """Observed outcomes of runs at these configurations in group g."""
        cfg = self.config
        lr, batch, wd, qat = np.broadcast_arrays(*(np.asarray(x, dtype=float)
                                                   for x in (lr, batch, wd, qat)))
        n = lr.size
        e, to_edge = self.excess(g, lr, batch, wd, qat)
        sd = g.noise * (1 + e / cfg.noise_excess_scale)
        log_noise = sd * rng.standard_normal(n)
        spikes = rng.random(n) < cfg.spike_prob
        log_noise += spikes * np.abs(rng.standard_normal(n)) * cfg.spike_scale * sd
        loss = g.base_loss * (1 + e) * np.exp(log_noise)
        p_div = ndtr(to_edge / self.div_width)
        diverged = (rng.random(n) < p_div) | (loss > cfg.diverged_ratio * g.base_loss)
        blown = g.base_loss * rng.uniform(*cfg.diverged_loss_ratio, n)
        missing = rng.random(n) < cfg.diverged_loss_missing_prob
        loss = np.where(diverged, np.where(missing, np.nan, np.maximum(blown, loss)), loss)
        full = lambda x: np.full(n, float(x))  # noqa: E731
        return Runs(n_params=full(g.n_params), n_active=full(g.n_active),
                    n_tokens=full(g.n_tokens), bits=full(g.bits), lr=lr.ravel().copy(),
                    batch=batch.ravel().copy(), weight_decay=wd.ravel().copy(),
                    qat=qat.ravel().copy(), loss=loss.ravel(), diverged=diverged.ravel())

    def hyperparameters(self, g: Group, u, v, rng: np.random.Generator, timescale_rule=False):
        """(lr, batch, wd, qat) at log-ratios u, v to the *law* optimum, with the task's
        weight-decay and QAT designs (or wd from the timescale rule, as the recommender does)."""
        law = law_point(g.n_active, g.n_tokens, g.bits)
        lr, batch = law.lr * np.exp(u), law.batch * np.exp(v)
        n = np.size(u)
        if timescale_rule:
            wd = batch / (lr * float(law.batch / (law.lr * law.weight_decay)))
        elif self.wd_mode[0] == "fixed":
            wd = np.full(n, self.wd_mode[1])
        else:
            wd = law.weight_decay * np.exp(rng.uniform(-self.wd_mode[1], self.wd_mode[1], n))
        if g.bits >= NO_QUANTIZATION_BITS:
            qat = np.zeros(n)
        elif self.qat_fixed:
            qat = np.full(n, float(law.qat))
        else:
            qat = rng.uniform(0.0, 1.0, n)
        return lr, batch, wd, qat


def _loguniform(rng, lo, hi, size=None):
    return np.exp(rng.uniform(math.log(lo), math.log(hi), size))


def _int(rng, bounds):
    return int(rng.integers(bounds[0], bounds[1] + 1))


def sample_task(rng: np.random.Generator, cfg: PriorConfig = PriorConfig(),
                design: str | None = None, n_groups: int | None = None,
                sizes: list[tuple[float, float]] | None = None) -> Task:
    """One synthetic task with its runs. design forces one design for every group; sizes
    forces the (N, D) groups (dense, unquantized) -- both for tests and the prior comparison."""
    quantized = sizes is None and rng.random() < cfg.quantized_prob
    bits = int(rng.choice(cfg.bits_choices)) if quantized else NO_QUANTIZATION_BITS
    moe_ratio = (_loguniform(rng, *cfg.moe_ratio_range)
                 if sizes is None and rng.random() < cfg.moe_prob else 1.0)
    if sizes is None:
        sizes = _sample_sizes(rng, cfg)
    if n_groups is not None:
        sizes = sizes[:n_groups]

    # Base loss law of this corpus.
    ek = laws.EPOCH_LOSS.constants
    e0 = ek["E"] * math.exp(cfg.loss_e_log_sd * rng.standard_normal())
    tn = ek["A"] / 1e9 ** ek["alpha"] * math.exp(cfg.loss_terms_log_sd * rng.standard_normal())
    td = ek["B"] / 1e10 ** ek["beta"] * math.exp(cfg.loss_terms_log_sd * rng.standard_normal())
    alpha = ek["alpha"] + cfg.loss_exponent_sd * rng.standard_normal()
    beta = ek["beta"] + cfg.loss_exponent_sd * rng.standard_normal()
    level_sd = cfg.group_level_sd_median * math.exp(0.5 * rng.standard_normal())

    # Optimum offsets from the laws.
    widen = cfg.offset_widen_median * math.exp(cfg.offset_widen_log_sd * rng.standard_normal())
    z = rng.standard_normal(6) * widen
    lr_c, lr_a, lr_b = z[0] * cfg.lr_log_c_sd, z[1] * cfg.lr_alpha_sd, z[2] * cfg.lr_beta_sd
    b_c, b_b = z[3] * cfg.batch_log_c_sd, z[4] * cfg.batch_beta_sd
    tau_c = z[5] * cfg.tau_log_sd
    qat_c = rng.standard_normal() * cfg.qat_f_sd
    jit = math.exp(cfg.group_jitter_log_sd * rng.standard_normal())
    jit_lr, jit_b = cfg.group_jitter_lr_median * jit, cfg.group_jitter_batch_median * jit

    # Bowl.
    a0 = cfg.a0 * math.exp(cfg.curvature_log_sd * rng.standard_normal())
    b0 = cfg.b0 * math.exp(cfg.curvature_log_sd * rng.standard_normal())
    a_exp = cfg.a_exponent + cfg.curvature_exponent_sd * rng.standard_normal()
    b_exp = cfg.b_exponent + cfg.curvature_exponent_sd * rng.standard_normal()
    rho = float(np.clip(cfg.rho + cfg.rho_sd * rng.standard_normal(), -0.8, 0.5))
    c_frac = rng.uniform(*cfg.timescale_fraction_range)
    kappa = cfg.asymmetry_mean + cfg.asymmetry_sd * rng.standard_normal()
    noise = cfg.noise_median * math.exp(cfg.noise_log_sd * rng.standard_normal())

    groups = []
    for n_act, d in sizes:
        n_tot = n_act * moe_ratio
        law = law_point(n_act, d, bits)
        dn, dd = math.log(n_act / STEPLAW_CENTRE_N), math.log(d / STEPLAW_CENTRE_D)
        lr_opt = float(law.lr) * math.exp(lr_c + lr_a * dn + lr_b * dd + jit_lr * rng.standard_normal())
        batch_opt = float(law.batch) * math.exp(b_c + b_b * dd + jit_b * rng.standard_normal())
        tau_law = float(law.batch / (law.lr * law.weight_decay * d))
        tau_opt = tau_law * math.exp(tau_c)
        wd_opt = batch_opt / (lr_opt * tau_opt * d)
        qat_opt = float(np.clip(law.qat + qat_c, 0.02, 0.98)) if quantized else 0.0
        n_eff = float(effective_params(n_act, bits)) * moe_ratio ** 0.3
        base = e0 + tn * (n_eff / 1e9) ** -alpha + td * (d / 1e10) ** -beta
        base *= math.exp(level_sd * rng.standard_normal())
        g_jit = np.exp(cfg.group_curvature_log_sd * rng.standard_normal(2))
        a = a0 * (d / 1e10) ** a_exp * g_jit[0]
        b = b0 * (d / 1e10) ** b_exp * g_jit[1]
        lam_min = 0.5 * (a + b - math.sqrt((a - b) ** 2 + 4 * rho ** 2 * a * b))
        c = min(c_frac * min(a, b), 0.45 * math.exp(-abs(kappa)) * lam_min)
        groups.append(Group(n_params=n_tot, n_active=n_act, n_tokens=d, bits=bits,
                            lr_opt=lr_opt, batch_opt=batch_opt, wd_opt=wd_opt, qat_opt=qat_opt,
                            base_loss=base, a=a, b=b, rho=rho, c=c, noise=noise))

    if rng.random() < cfg.wd_fixed_prob:
        wd = 0.1 if rng.random() < cfg.wd_steplaw_prob else float(_loguniform(rng, *cfg.wd_fixed_range))
        wd_mode = ("fixed", wd)
    else:
        wd_mode = ("varied", cfg.wd_varied_log_half_range)
    task = Task(
        groups=groups, kappa=kappa,
        qat_curvature=cfg.qat_curvature * math.exp(cfg.qat_curvature_log_sd * rng.standard_normal()),
        div_u=cfg.divergence_u + cfg.divergence_u_sd * rng.standard_normal(),
        div_slope=cfg.divergence_batch_slope_sd * rng.standard_normal(),
        div_width=rng.uniform(*cfg.divergence_width_range),
        cliff_height=cfg.cliff_height_median * math.exp(cfg.cliff_height_log_sd * rng.standard_normal()),
        cliff_scale=rng.uniform(*cfg.cliff_scale_range),
        wd_mode=wd_mode, qat_fixed=rng.random() < cfg.qat_fixed_prob, config=cfg)
    for g in groups:
        kind = design or DESIGNS[int(rng.choice(len(DESIGNS), p=np.asarray(cfg.design_probs)))]
        u, v = _design(rng, cfg, kind)
        g.runs = task.sample(g, *task.hyperparameters(g, u, v, rng), rng)
    return task


def _sample_sizes(rng, cfg: PriorConfig) -> list[tuple[float, float]]:
    n_sizes = _int(rng, cfg.sizes_per_task)
    centre = _loguniform(rng, *cfg.n_active_range)
    ratio = rng.uniform(*cfg.size_ratio_range)
    tpp_low = _loguniform(rng, *cfg.tpp_low_range)
    out = []
    for k in range(n_sizes):
        n = centre * ratio ** (k - (n_sizes - 1) / 2)
        for tpp in tpp_low * np.exp(rng.uniform(0, math.log(cfg.tpp_span_max), _int(rng, cfg.budgets_per_size))):
            out.append((float(n), float(n * tpp)))
    if len(out) > cfg.max_groups:
        keep = rng.choice(len(out), cfg.max_groups, replace=False)
        out = [out[i] for i in sorted(keep)]
    return out


def _design(rng, cfg: PriorConfig, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(u, v) of a group's runs, as log-ratios to the law optimum (the experimenter's guess)."""
    if kind in ("grid", "thinned_grid"):
        lr_step = math.log(float(rng.choice(cfg.grid_lr_ratios)))
        n_lr = max(2, int(round(rng.uniform(*cfg.grid_lr_span) / lr_step)) + 1)
        top = rng.uniform(*cfg.grid_lr_top_u)
        us = top - lr_step * np.arange(n_lr)[::-1]
        n_b = _int(rng, cfg.grid_batch_count)
        b_step = math.log(float(rng.choice(cfg.grid_batch_ratios)))
        centre = cfg.grid_batch_centre_sd * rng.standard_normal()
        vs = centre + b_step * (np.arange(n_b) - (n_b - 1) / 2)
        u, v = (a.ravel() for a in np.meshgrid(us, vs, indexing="ij"))
        keep_range = cfg.grid_keep_range if kind == "grid" else cfg.thinned_keep_range
        keep = rng.random(u.size) < rng.uniform(*keep_range)
        if keep.sum() < 2:
            keep[rng.choice(u.size, min(2, u.size), replace=False)] = True
        return u[keep], v[keep]
    if kind == "near_optimum":
        n = _int(rng, cfg.near_count)
        guess = cfg.near_guess_sd * rng.standard_normal(2)
        return (guess[0] + cfg.near_spread_sd * rng.standard_normal(n),
                guess[1] + cfg.near_spread_sd * rng.standard_normal(n))
    n = _int(rng, cfg.random_count)
    return rng.uniform(*cfg.random_box_u, n), rng.uniform(*cfg.random_box_v, n)
