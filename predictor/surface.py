"""A global parametric loss surface fitted on all stored runs (not only each group's best).

    L = L0(N, D) * (1 + P)

L0      Chinchilla form E + A/N^alpha + B/D^beta, fitted to per-group loss levels with a prior
        toward the Epoch constants (the levels are free in the bowl fit, so a level misfit
        cannot bias the shape and centre); refitted on resampled groups, it says how uncertain
        the level is past the fitted sizes.
centre  ln lr* = c0 + cN xN + cD xD,  ln B* = d0 + dN xN + dD xD  with xN = ln(Na/N0),
        xD = ln(D/D0): the Step Law form (plus an N term on B); its published constants are
        the prior and the fit with no data.
bowl    v = ln(B/B*), u = ln(lr/lr*) - g v (the shear g is the reference's eta|B rule);
        P = a(D) linex(u; ku) + b(D) linex(v; kv), linex(x; k) = 2 (e^{kx} - 1 - kx) / k^2:
        x^2 near 0, exponential on one side, linear on the other (the data are steeper at
        high lr); a and b are power laws in D as in the reference.
cliff   an edge-of-stability rise c e^{-kc delta} (e^{kc u} - 1 - kc u), delta the log-distance
        from the optimum to the divergence boundary lr_div(N, D, B) (a logistic model of the
        diverged runs): it grows as the boundary nears, and keeps the minimum at u = 0.
        Diverged runs stay out of the regression (their 5-11 nats say nothing about the bowl);
        they place lr_div, and recommendations keep lr below lr_div / lr_safety.
wd, QAT not identifiable from sweeps that hold them fixed, so they enter as the prior does
        (bowl.py): c [(ln tau - ln tau*)^2 - (ln tau_ref - ln tau*)^2] with the AdamW timescale
        tau = B/(lr wd D) and tau_ref its value at wd = WD_REF (the learned bowl is the bowl at
        WD_REF), each square flat beyond bowl.TIMESCALE_RANGE, and QAT_CURVATURE (f - f*)^2
        when weight_bits < 16.
weights soft_l1 in ln-loss, and an sd growing as 1 + excess/e0 with a run's excess over its
        group's best: the far flanks are noisier and the form is least right there, so they
        must not drag the centre, which is what a recommendation needs.
"""

from dataclasses import replace

import numpy as np
from scipy.optimize import least_squares

from predictor import laws
from predictor.bowl import STEPLAW_BOWL, TIMESCALE_CURVATURE_FRACTION, timescale_excess
from predictor.intervals import IntervalModel
from predictor.loss_model import LossPrediction
from predictor.pfn.features import law_point  # numpy only: no torch
from predictor.prior import DIVERGENCE_LR_FACTOR, QAT_CURVATURE
from predictor.table import RunTable

N0, D0 = 5e8, 2e10  # centre of the coordinates
WD_REF = 0.1  # the weight decay the learned bowl stands for (the Step Law sweeps used it)
PARAMS = ("c0", "cN", "cD", "d0", "dN", "dD", "la0", "laD", "ku", "lb0", "lbD", "kv", "g", "lc", "kc")
# Prior sd of each parameter: weak next to ~1700 runs, but it keeps fits on few groups sane.
PRIOR_SD = np.array([1.0, 0.3, 0.3, 1.0, 0.3, 0.3, 1.0, 0.5, 1.0, 1.0, 0.5, 1.0, 0.5, 1.0, 1.0])
# Bootstrap draws only feed the spread of the optimum: a looser stop is plenty, and 5x faster.
BOOTSTRAP_TOLERANCE = 1e-5
# The groups' ln-levels about the Chinchilla form: their sd, and the misfit past which a group
# is treated as an outlier (the Step Law groups sit within about 1% of the form).
LEVEL_SD, LEVEL_OUTLIER = 0.005, 0.02
# The relative excess over the optimum the surface predicts at most (4x the optimum's loss).
MAX_EXCESS = 3.0
# The starting point of the shape exponents: off the zero-gradient point k = 0 of linex.
SHAPE_START = {"ku": 1.0, "kv": 0.5}
# The Chinchilla form's prior and starting point: the Epoch constants.
EPOCH_L0 = np.array([laws.EPOCH_LOSS.constants[k] for k in ("E", "A", "alpha", "B", "beta")])
# Group-bootstrap refits of the level form (~5 ms each): how uncertain its move to sizes
# beyond the fitted ones is (an sd from 32 draws is good to about 12%).
LEVEL_BOOT_DRAWS = 32


def prior_theta() -> np.ndarray:
    """Step Law's centre and the reference's bowl, in this surface's parameters."""
    lr, batch, bowl = laws.STEPLAW_LR.constants, laws.STEPLAW_BATCH.constants, STEPLAW_BOWL
    a = bowl["a"] * (D0 / bowl["d_ref"]) ** bowl["a_exp"]
    b = bowl["b"] * (D0 / bowl["d_ref"]) ** bowl["b_exp"]
    rho = bowl["rho"]
    return np.array([
        np.log(lr["c"]) + lr["alpha"] * np.log(N0) + lr["beta"] * np.log(D0), lr["alpha"], lr["beta"],
        np.log(batch["c"]) + batch["beta"] * np.log(D0), 0.0, batch["beta"],
        np.log(a), bowl["a_exp"], 0.0,
        np.log(b * (1 - rho**2)), bowl["b_exp"], 0.0,  # b(1 - rho^2): the sheared bowl's v curvature
        -rho * np.sqrt(b / a), np.log(0.03), 3.0])


def linex(x, k):
    """2 (e^{kx} - 1 - kx) / k^2, through its series near k = 0 (smooth in k for the fit).
    Far out on the exponential flank it is inf, which the penalty saturates (_saturated)."""
    kx = k * x
    small = np.abs(kx) < 1e-3
    with np.errstate(over="ignore"):  # e^{kx} past 1e308 is inf: expected, and saturated
        exact = 2.0 * (np.expm1(kx) - kx) / np.where(small, 1.0, k) ** 2
    return np.where(small, x**2 * (1 + kx / 3 + kx**2 / 12), exact)


def group_index(runs: RunTable) -> tuple[np.ndarray, np.ndarray]:
    """(unique (N, Na, D, bits) keys, index of each run's key): quantized runs sit apart."""
    keys = np.stack([runs.n_params, runs.n_active_params, runs.n_tokens, runs.weight_bits], 1)
    unique, inverse = np.unique(keys, axis=0, return_inverse=True)
    return unique, inverse.ravel()


class LossSurface:
    name = "surface"

    def __init__(self, e0: float | None = 0.003, f_scale: float = 0.003, lr_safety: float = 3.0,
                 calibrate: bool = True, n_boot: int = 0, random_state: int = 0,
                 tolerance: float = 1e-8):
        self.e0 = e0  # locality of the weighting (None: off)
        self.f_scale = f_scale  # soft_l1 scale in ln-loss, about twice the run-to-run noise
        self.lr_safety = lr_safety  # recommended lr stays below lr_div / lr_safety
        self.calibrate = calibrate  # intervals from an inner leave-one-group-out in fit()
        self.n_boot = n_boot  # group-bootstrap refits for the optimum's uncertainty
        self.random_state = random_state
        self.tolerance = tolerance  # least_squares ftol/xtol/gtol
        self.boot_theta_ = None
        self.theta_ = prior_theta()
        for name, value in SHAPE_START.items():
            self.theta_[PARAMS.index(name)] = value
        self.L0_ = EPOCH_L0.copy()
        self.group_levels_ = None  # (keys, ln-levels) of the fitted groups
        # (draws, 5): the level form refitted on resampled groups (None: not computed)
        self.boot_L0_ = None
        self.divergence_ = None
        self.intervals_ = IntervalModel()
        self.n_runs_ = 0
        self.fitted_sizes_ = None  # ((Na lo, hi), (D/Na lo, hi)) of the swept groups' runs
        # (groups, 2): ln lr and ln B of each held-out group's best run over the recommendation
        # made without it (from the calibration's folds; None uncalibrated)
        self.optimum_offsets_ = None

    @property
    def version_(self) -> str:
        return f"surface@{_fingerprint(self.theta_, self.L0_, np.ravel(self.fitted_sizes_ or ()))}"

    # ----- the model -----
    def centre(self, theta, n_active, n_tokens, law_shift: bool = True):
        """(ln lr*, ln B*) for the given sizes: the fitted form within the sizes fitted on;
        beyond them, its value at the nearest fitted sizes moved as the published laws move
        (whose lr slows with data past 500 tokens per parameter; the fitted form, linear in
        ln D, would keep growing it: 30x the laws' lr at 100M params and 10T tokens).
        law_shift=False leaves out that move, which does not depend on theta."""
        one_spec = np.ndim(n_active) == np.ndim(n_tokens) == 0
        n_active, n_tokens = np.broadcast_arrays(np.atleast_1d(np.asarray(n_active, float)),
                                                 np.atleast_1d(np.asarray(n_tokens, float)))
        n_in, d_in, moved = self._into_fitted_sizes(n_active, n_tokens)
        x_n, x_d = np.log(n_in / N0), np.log(d_in / D0)
        log_lr = theta[0] + theta[1] * x_n + theta[2] * x_d
        log_b = theta[3] + theta[4] * x_n + theta[5] * x_d
        if law_shift and moved.any():
            shift = _law_shift(n_active[moved], n_tokens[moved], n_in[moved], d_in[moved])
            log_lr, log_b = np.array(log_lr, float), np.array(log_b, float)
            log_lr[moved] += shift[:, 0]
            log_b[moved] += shift[:, 1]
        if one_spec:  # numbers back, as given
            return float(log_lr[0]), float(log_b[0])
        return log_lr, log_b

    def _into_fitted_sizes(self, n_active, n_tokens):
        """(Na, D, moved): the sizes (arrays of one shape) moved into the box of (ln Na,
        ln D/Na) that the swept groups fitted on span (RunTable.swept), and which were."""
        if self.fitted_sizes_ is None:
            return n_active, n_tokens, np.zeros(n_active.shape, bool)
        (n_lo, n_hi), (r_lo, r_hi) = self.fitted_sizes_
        ratio = n_tokens / n_active
        n_in, r_in = np.clip(n_active, n_lo, n_hi), np.clip(ratio, r_lo, r_hi)
        moved = (n_in != n_active) | (r_in != ratio)
        return n_in, np.where(moved, n_in * r_in, n_tokens), moved

    def penalty(self, theta, q: RunTable) -> np.ndarray:
        """Relative excess P of each query over the optimum of its spec."""
        log_lr_star, log_b_star = self.centre(theta, q.n_active_params, q.n_tokens)
        x_d = np.log(q.n_tokens / D0)
        v = np.log(q.batch_size_tokens) - log_b_star
        u = np.log(q.lr) - log_lr_star - theta[12] * v
        a, b = np.exp(theta[6] + theta[7] * x_d), np.exp(theta[9] + theta[10] * x_d)
        p = a * linex(u, theta[8]) + b * linex(v, theta[11])
        delta = np.log(self.lr_div(q, theta)) - (log_lr_star + theta[12] * v)
        p = p + np.exp(theta[13] - theta[14] * delta) * (np.expm1(theta[14] * u) - theta[14] * u)
        return _saturated(p + self._weight_decay_term(q, np.minimum(a, b)) + _qat_term(q))

    @staticmethod
    def _weight_decay_term(q: RunTable, curvature) -> np.ndarray:
        c = TIMESCALE_CURVATURE_FRACTION * curvature
        tau_star = laws.POWER_LINES_TIMESCALE.constants["c"] * (
            q.n_tokens / q.n_active_params) ** laws.POWER_LINES_TIMESCALE.constants["alpha"]
        log_tau_ref = np.log(q.batch_size_tokens / (q.lr * WD_REF * q.n_tokens) / tau_star)
        wd = np.where(q.weight_decay > 0, q.weight_decay, WD_REF)  # no decay: no timescale to move
        log_tau = log_tau_ref - np.log(wd / WD_REF)
        return c * (timescale_excess(log_tau) - timescale_excess(log_tau_ref))

    def base_loss(self, q: RunTable, l0: np.ndarray | None = None) -> np.ndarray:
        e, a, alpha, b, beta = self.L0_ if l0 is None else l0
        n_eff = _effective_params(q)
        return e + a / n_eff**alpha + b / q.n_tokens**beta

    def level_extrapolation_sd(self, q: RunTable) -> np.ndarray:
        """sd of ln-loss that the level's move from the fitted sizes to each query's adds:
        the spread of that move over the level form's group-bootstrap refits. 0 within the
        fitted sizes, where the calibrated level error stands alone."""
        if self.boot_L0_ is None:
            return np.zeros(len(q))
        n_in, d_in, moved = self._into_fitted_sizes(q.n_active_params, q.n_tokens)
        if not moved.any():
            return np.zeros(len(q))
        # The experts move with the active parameters: the sparsity stays the query's.
        inside = replace(q, n_params=q.n_params * n_in / q.n_active_params,
                         n_active_params=n_in, n_tokens=d_in)
        moves = [np.log(self.base_loss(q, l0) / self.base_loss(inside, l0)) for l0 in self.boot_L0_]
        return np.std(moves, axis=0)

    def mean(self, q: RunTable) -> np.ndarray:
        return self.base_loss(q) * (1 + self.penalty(self.theta_, q))

    def lr_div(self, q: RunTable, theta=None) -> np.ndarray:
        """The lr at which half the runs diverge (prior: 6x the optimum, as in the reference)."""
        if self.divergence_ is None:
            centre = self.centre(self.theta_ if theta is None else theta, q.n_active_params,
                                 q.n_tokens)
            return DIVERGENCE_LR_FACTOR * np.exp(centre[0])
        w = self.divergence_
        return np.exp(-(w[0] + w[2] * np.log(q.batch_size_tokens / 1e6)
                        + w[3] * np.log(q.n_active_params / N0) + w[4] * np.log(q.n_tokens / D0)) / w[1])

    def lr_limit(self, q: RunTable) -> np.ndarray:
        """Largest lr a recommendation may use: a safety factor below the divergence boundary."""
        return self.lr_div(q) / self.lr_safety

    def interval_penalty(self, q: RunTable) -> np.ndarray:
        """What the predictive sd grows with: the distance from the optimum."""
        return self.penalty(self.theta_, q)

    def predict(self, q: RunTable) -> LossPrediction:
        mean = self.mean(q)
        half = self.intervals_.half_width(self.interval_penalty(q), self.level_extrapolation_sd(q))
        return LossPrediction(mean=mean, lo=mean * np.exp(-half), hi=mean * np.exp(half))

    # ----- fitting -----
    def fit(self, runs: RunTable, surface: "LossSurface | None" = None) -> "LossSurface":
        """`surface`: accepted for a uniform interface with SurfaceGBM; a surface refits itself."""
        self.n_runs_ = len(runs)
        self._fit_divergence(runs)
        ok = runs.completed
        if not ok.any():
            return self
        completed = runs.subset(ok)
        swept = runs.swept()
        ratio = swept.n_tokens / swept.n_active_params
        self.fitted_sizes_ = ((swept.n_active_params.min(), swept.n_active_params.max()),
                              (ratio.min(), ratio.max()))
        keys, groups = group_index(completed)
        levels = self._fit_bowl(completed, groups, len(keys))
        self.group_levels_ = (keys, levels)
        self.L0_ = self._fit_base_loss(keys, levels)
        if self.calibrate and len(keys) >= 4:
            from predictor.intervals import calibrate_by_leaving_groups_out

            self.intervals_, self.optimum_offsets_ = calibrate_by_leaving_groups_out(self, runs)
        if self.calibrate:  # the model that answers (inner folds' clones do not extrapolate)
            self.bootstrap_level()
        if self.n_boot:
            self.bootstrap(runs, self.n_boot)
        return self

    def bootstrap(self, runs: RunTable, n_boot: int) -> None:
        """Refits on groups resampled with replacement (warm-started, ~0.1 s each) and keeps
        the parameter draws: the uncertainty of the optimum's location."""
        _, groups = group_index(runs)
        labels = np.unique(groups)
        rng = np.random.default_rng(self.random_state)
        draws = []
        for _ in range(n_boot):
            picked = rng.choice(labels, size=len(labels), replace=True)
            rows = np.concatenate([np.flatnonzero(groups == g) for g in picked])
            draws.append(self.clone(tolerance=BOOTSTRAP_TOLERANCE).fit(runs.subset(rows)).theta_)
        self.boot_theta_ = np.array(draws)

    def optimum_log_offsets(self, n_active: float, n_tokens: float) -> np.ndarray | None:
        """(draws, 2): ln lr* and ln B* of each bootstrap draw minus the fit's, or None."""
        if self.boot_theta_ is None:
            return None
        # The move past the fitted sizes is the same for every theta: it cancels here.
        fitted = np.array(self.centre(self.theta_, n_active, n_tokens, law_shift=False))
        return np.array([self.centre(t, n_active, n_tokens, law_shift=False)
                         for t in self.boot_theta_]) - fitted

    def held_out_optimum_offsets(self) -> np.ndarray | None:
        return self.optimum_offsets_

    def clone(self, calibrate: bool = False, tolerance: float | None = None) -> "LossSurface":
        """Same parameters, warm-started from this fit: for inner folds."""
        twin = LossSurface(self.e0, self.f_scale, self.lr_safety, calibrate,
                           tolerance=self.tolerance if tolerance is None else tolerance)
        twin.theta_ = self.theta_.copy()
        twin.fitted_sizes_ = self.fitted_sizes_
        return twin

    def _fit_divergence(self, runs: RunTable) -> None:
        """Logistic P(diverged) on [1, ln lr, ln B, ln Na, ln D], lightly ridged."""
        div = runs.diverged
        if div.sum() < 3 or (~div).sum() < 3:
            self.divergence_ = None
            return
        features = np.stack([np.ones(len(runs)), np.log(runs.lr), np.log(runs.batch_size_tokens / 1e6),
                             np.log(runs.n_active_params / N0), np.log(runs.n_tokens / D0)], 1)

        def deviance(w):
            z = features @ w
            return np.concatenate([np.sqrt(2 * (np.logaddexp(0, z) - div * z)), 0.1 * w[1:]])

        start = np.array([-3 * np.log(0.012), 3.0, 0.0, 0.0, 0.0])  # boundary near lr 0.012
        self.divergence_ = least_squares(deviance, start).x

    def _fit_bowl(self, runs: RunTable, groups: np.ndarray, n_groups: int) -> np.ndarray:
        """Fits the shape and centre with one free ln-level per group; returns the levels."""
        prior = prior_theta()
        log_loss = np.log(runs.loss)
        best = np.array([runs.loss[groups == j].min() for j in range(n_groups)])
        sd = self.f_scale * (1 + (runs.loss / best[groups] - 1) / self.e0) if self.e0 else self.f_scale
        n_theta = len(PARAMS)

        def residuals(p):
            theta, levels = p[:n_theta], p[n_theta:]
            r = log_loss - levels[groups] - np.log1p(self.penalty(theta, runs))
            return np.concatenate([r / sd, (theta - prior) / PRIOR_SD])

        sparsity = np.zeros((len(runs) + n_theta, n_theta + n_groups), bool)
        sparsity[:len(runs), :n_theta] = True
        sparsity[np.arange(len(runs)), n_theta + groups] = True  # a level touches its group only
        sparsity[len(runs):, :n_theta] = np.eye(n_theta, dtype=bool)
        start = np.concatenate([self.theta_, np.log(best)])
        tol = self.tolerance
        fit = least_squares(residuals, start, loss="soft_l1", jac_sparsity=sparsity,
                            x_scale="jac", max_nfev=200, ftol=tol, xtol=tol, gtol=tol)
        self.converged_ = fit.status > 0
        self.theta_ = fit.x[:n_theta]
        return fit.x[n_theta:]

    def bootstrap_level(self) -> None:
        """Keeps the level form refitted on the fitted groups resampled with replacement
        (boot_L0_, for level_extrapolation_sd). A single group's draws all agree: with nothing
        to tell its move apart, the prior's alone is left (a known gap)."""
        if self.group_levels_ is None:
            return
        keys, levels = self.group_levels_
        rng = np.random.default_rng(self.random_state)
        self.boot_L0_ = np.array([self._fit_base_loss(keys[picked], levels[picked]) for picked in
                                  rng.integers(0, len(keys), size=(LEVEL_BOOT_DRAWS, len(keys)))])

    def _fit_base_loss(self, keys: np.ndarray, levels: np.ndarray) -> np.ndarray:
        """Chinchilla form to the groups' ln-levels, with a prior toward the Epoch constants:
        its (E, A, alpha, B, beta)."""
        gamma = laws.KUMAR_EFFECTIVE_PARAMS.constants["gamma"]
        n_eff = np.where(keys[:, 3] < 16, keys[:, 0] * (1 - np.exp(-keys[:, 3] / gamma)), keys[:, 0])
        start = np.log(EPOCH_L0)
        prior_sd = np.array([0.3, 1.0, 0.1, 1.0, 0.1])

        log_n, log_d = np.log(n_eff), np.log(keys[:, 2])

        def terms(log_params):
            e, a, alpha, b, beta = np.exp(log_params)
            return e, a * np.exp(-alpha * log_n), b * np.exp(-beta * log_d), alpha, beta

        def residuals(log_params):
            e, n_term, d_term, _, _ = terms(log_params)
            model = np.log(e + n_term + d_term)
            return np.concatenate([(model - levels) / LEVEL_SD, (log_params - start) / prior_sd])

        def jacobian(log_params):  # analytic: 5x faster than finite differences
            e, n_term, d_term, alpha, beta = terms(log_params)
            total = e + n_term + d_term
            columns = [np.full_like(total, e), n_term, -alpha * log_n * n_term, d_term,
                       -beta * log_d * d_term]
            return np.vstack([np.stack(columns, 1) / total[:, None] / LEVEL_SD, np.diag(1 / prior_sd)])

        # Robust: a group of one report of another corpus, or of an absurd loss (999, 0.02),
        # moved every spec's level (squared, one group outweighed the rest); beyond
        # LEVEL_OUTLIER its pull no longer grows.
        fit = least_squares(residuals, start, jac=jacobian, loss="soft_l1",
                            f_scale=LEVEL_OUTLIER / LEVEL_SD, max_nfev=500)
        return np.exp(fit.x)


def _saturated(p: np.ndarray) -> np.ndarray:
    """The excess as it is up to a doubled loss, then bending smoothly towards MAX_EXCESS: the
    exponential flanks, unbounded, predicted 43,000 nats at a pinned lr of 1 and 1e9 further
    out, where a run diverges (the Step Law sweep's diverged runs end at 5-11 nats, 2-5x the
    best). Completed runs that far out are too few to move a fit."""
    over = np.maximum(p - 1.0, 0.0)
    cap = MAX_EXCESS - 1.0
    return np.where(p > 1.0, 1.0 + cap * np.tanh(over / cap), p)


def _law_shift(n_active, n_tokens, n_from, d_from) -> np.ndarray:
    """(k, 2): ln lr* and ln B* of the published laws at (n_active, n_tokens) minus theirs at
    (n_from, d_from), for each of k pairs (the optimum does not depend on the weight bits)."""
    pairs = np.stack([n_active, n_tokens, n_from, d_from], axis=1)
    one_spec = (pairs == pairs[0]).all()  # a recommendation's grid: one row says it all
    n_active, n_tokens, n_from, d_from = (pairs[:1] if one_spec else pairs).T
    to, at = law_point(n_active, n_tokens, 16.0), law_point(n_from, d_from, 16.0)
    shift = np.stack([np.log(to.lr / at.lr), np.log(to.batch / at.batch)], axis=1)
    return np.broadcast_to(shift, (len(pairs), 2)) if one_spec else shift


def _effective_params(q: RunTable) -> np.ndarray:
    """Kumar et al.: low-bit weights act as fewer parameters. The level follows all parameters
    (for MoE, the experts too); the optimum follows the active ones."""
    gamma = laws.KUMAR_EFFECTIVE_PARAMS.constants["gamma"]
    return np.where(q.weight_bits < 16, q.n_params * (1 - np.exp(-q.weight_bits / gamma)), q.n_params)


def _qat_term(q: RunTable) -> np.ndarray:
    quantized = q.weight_bits < 16
    if not quantized.any():
        return np.zeros(len(q))
    bytes_per_param = q.weight_bits / 8
    s = np.maximum(q.n_tokens / (q.n_active_params * bytes_per_param), 1 + 1e-9)
    f_star = np.exp(-laws.DREMOV_QAT.constants["k"] / np.log(s))
    return np.where(quantized, QAT_CURVATURE * (q.qat_fraction - f_star) ** 2, 0.0)


def _fingerprint(*arrays: np.ndarray) -> str:
    import hashlib

    digest = hashlib.sha256(b"".join(np.round(a, 10).tobytes() for a in arrays))
    return digest.hexdigest()[:10]
