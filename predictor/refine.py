"""The refinement loop: reported runs feed one Optuna study per (tenant, spec key)
(predictor/study.py); EXPLORE asks the study for its next trial with the predictor-guided
sampler (predictor/sampler.py); EXPLOIT returns the best configuration of the tenant's model
conditioned on the study's trials (predictor/conditioned.py; see Refiner._best), and today's
recommendation while the study has no completed trial.

A run reported with a trial_id closes that trial (COMPLETE with its loss; FAIL with
outcome=diverged, which the sampler learns from, or outcome=failed, which it ignores). A run
without one (the user's own configuration), or one whose values or spec differ from its trial's,
is added as a finished trial with its own values to every existing study of its spec whose pins
it matches. Runs stored without a report (`hparamrec import`) reach a study when it is created
and when it is next explored or read (predictor/study_sync.py); so does a reported run whose
tell never happened (a failure between storing and telling), whatever its spec: the next read of
its trial's study closes the trial (superseded, when the run is of another size), and the
studies of the run's own spec take it at their next read. Telling is idempotent: trials
carry the run_id they came from, so a re-sent run (or a retry after such a failure, or a tell
that finds the run told by a sync) never adds a second trial. Asks and tells of one study hold
its lock (in-process, and a PostgreSQL advisory lock across replicas; on SQLite, which serves
one replica, in-process).

An explore trial not reported within `trial_timeout_seconds` of being handed out or of its last
heartbeat (predictor/trial_timeouts.py: what a long run sends to keep it) is abandoned: the next
explore of its study closes it as FAIL (user attribute timed_out), so the sampler stops steering
around it; a late report against it is stored and added as the user's own run. PredictLoss answers
with the exploit's knowledge: the model conditioned on the spec's studies (predict_loss).
"""

import itertools
import math

import numpy as np
from optuna.trial import TrialState

from benchmark_db.errors import InvalidArgument
from benchmark_db.records import Pins, RunRecord, RunReport, TrainingSpec, check_run_id
from benchmark_db.store import RunStore
from predictor.argmin import free_weight_decay
from predictor.conditioned import NOISE_SD, ConditionedModel, Params, StudyTrials
from predictor.loss_model import LossPrediction
from predictor.prior import NEAR_OPTIMAL_EXCESS, Z80, PriorRecommender
from predictor.prior_model import PriorLossModel
from predictor.recommendation import HYPERPARAMETERS, Interval, Recommendation, Source
from predictor.registry import ModelRegistry
from predictor.sampler import PredictorGuidedSampler, candidates, space_point
from predictor.study import SearchSpace, Studies, study_name, trial_id
from predictor.study_sync import StudySync, add_runs, close_trial
from predictor.table import RunTable
from predictor.trial_timeouts import TIMED_OUT_ATTR, TrialStatus, TrialTimeouts

GP_VERSION = "study-gp@1"
FOR_RUN_ATTR = "for_run_id"  # a trial's user attribute: the run_id it was handed out for
# What the exploit recommendation is once the study has completed trials: the argmin of the
# conditioned mean over the search (mean), of its upper 80% bound (upper), the tried
# configuration with the lowest conditioned mean (tried_mean) or lowest reported loss (best_run).
# noise_aware and guarded act as best_run until the reports fail the noisy-reports check; then
# the former picks as tried_mean under a fitted noise, the latter keeps the model's own
# recommendation (docs/refinement.md).
EXPLOIT_RULES = ("mean", "upper", "tried_mean", "best_run", "noise_aware", "guarded")
# Chosen on closed loops over sweeps drawn from the PFN's prior (benchmarks/exploit_rules.py),
# never on the real sweep, by criteria written down before each run (docs/refinement.md):
# best_run had the lowest regret at every k there; guarded, the same without report noise and
# lower with one step's batch noise on each report.
EXPLOIT_RULE = "guarded"
GRID_POINTS = 41  # per free axis of lr and batch in the exploit search
# The reported losses are checked against the conditioned model once this many have completed;
# a warning when their chi-square's p-value is below NOISY_REPORTS_P (fixed, not tuned: a 1%
# false alarm rate where the model's own uncertainty is right).
NOISY_REPORTS_MIN_TRIALS = 3
NOISY_REPORTS_P = 0.01
# Only the trials nearest the best are checked: SHAPE_SD is the model's misfit near its optimum,
# and over a whole imported grid (runs at 30x the best lr) clean smoothed losses failed the
# check. 8 is the most trials the check was measured on (benchmarks/refine.py, k <= 8).
NOISY_REPORTS_WINDOW = 8
NOISY_REPORTS_MARK = "reported losses of this spec disagree with"  # in the warning's text
FINE_SD = 0.1  # in length scales: the local search around the best candidate


def _trial_of_run(study, run_id: str):
    """The trial handed out for this run that it may still be training: running, or given up
    by the time-out (a job resumed after a long wait trains its values on); else None."""
    states = (TrialState.RUNNING, TrialState.FAIL)
    return next((t for t in study.get_trials(deepcopy=False, states=states)
                 if t.user_attrs.get(FOR_RUN_ATTR) == run_id
                 and (t.state is TrialState.RUNNING or TIMED_OUT_ATTR in t.user_attrs)), None)


def params_of(rec) -> Params:
    return {n: np.array([getattr(rec, n)], float) for n in HYPERPARAMETERS}


def _take(params: Params, i: int) -> Params:
    return {n: params[n][[i]] for n in params}


def _concat(*parts: Params) -> Params:
    return {n: np.concatenate([p[n] for p in parts]) for n in HYPERPARAMETERS}


class Refiner:
    def __init__(self, store: RunStore, registry: ModelRegistry, trial_timeout_seconds: float = 0.0):
        self.studies = Studies(store.url, store.engine)
        self.store = store
        self.registry = registry
        self.timeouts = TrialTimeouts(self.studies, trial_timeout_seconds)
        self.sync = StudySync(store, self.studies)
        self._prior = PriorRecommender()

    def close(self) -> None:
        self.studies.close()

    def _current(self, tenant: str):
        predictor = self.registry.get(tenant)
        if predictor is None:
            return PriorLossModel(), self._prior
        return predictor.model, predictor.recommender

    # ----- recommendations -----
    def exploit(self, tenant: str, spec: TrainingSpec, pins: Pins,
                rule: str = EXPLOIT_RULE) -> Recommendation:
        """The best configuration given everything reported; `rule` (EXPLOIT_RULES) says what
        "best" means once the study has completed trials."""
        model, recommender = self._current(tenant)
        base = recommender.recommend(spec, pins)
        name = study_name(tenant, spec, pins)
        study = self.studies.load(name)
        if study is None:
            return base
        self.sync.sync(tenant, spec, study)  # one indexed aggregate unless runs were imported
        conditioned = self._conditioned(study, model, spec, pins)
        if not conditioned.trials.n_completed and conditioned.lr_ok(params_of(base))[0]:
            return base
        return self._best(conditioned, base, pins, study, rule)[0]

    def explore(self, tenant: str, spec: TrainingSpec, pins: Pins, run_id: str = "") -> Recommendation:
        """The study's next trial. run_id (optional): the run it is for. The trial handed out for
        that run is handed out again (a retry, another process of the job, the job restarted),
        with its values and today's predictions, while it is running or after the time-out gave
        it up (with a warning); a run already stored is refused, as its report (deduplicated by
        run_id) could never close a new trial."""
        if run_id and (stored := self.store.find(tenant, check_run_id(run_id))) is not None:
            raise InvalidArgument.single(
                "run_id", f"run {run_id!r} is already stored ({stored.outcome.status.value}"
                          + (f", trial {stored.trial_id}" if stored.trial_id else "") + "): a trial "
                          "handed out for it could never be closed by its report; use a new run_id")
        model, recommender = self._current(tenant)
        base = recommender.recommend(spec, pins)
        name = study_name(tenant, spec, pins)
        with self.studies.lock(name):
            study = self.studies.load(name)
            if study is None:
                study = self.studies.create(name, SearchSpace.around(base, spec, pins), spec, pins)
            self.sync.sync(tenant, spec, study, locked=True)  # a new study: every matching run
            self.timeouts.expire(study)
            conditioned = self._conditioned(study, model, spec, pins)
            if conditioned.trials.n_completed or not conditioned.lr_ok(params_of(base))[0]:
                best, chosen = self._best(conditioned, base, pins, study)
            else:
                best, chosen = base, params_of(base)
            space = conditioned.space
            storage = self.studies.storage()
            trial = held = _trial_of_run(study, run_id) if run_id else None
            if held is None:
                study.sampler = PredictorGuidedSampler(
                    model, spec, space, first={n: float(chosen[n][0]) for n in HYPERPARAMETERS})
                trial = study.ask(space.distributions())
                storage.set_trial_user_attr(trial._trial_id, "model_version", model.version_)
                if run_id:
                    storage.set_trial_user_attr(trial._trial_id, FOR_RUN_ATTR, run_id)
            elif held.state is TrialState.RUNNING:
                self.timeouts.alive(held)  # asked for again: its run is alive
        params = {n: np.array([trial.params[n]], float) for n in HYPERPARAMETERS}
        if all(math.isclose(trial.params[n], getattr(best, n), rel_tol=1e-12) for n in HYPERPARAMETERS):
            rec = best
        elif conditioned.trials.n_completed:
            rec = self._at(best, conditioned, params)
        else:
            prediction = model.predict(conditioned.queries(params))
            rec = best.model_copy(update={
                **{n: trial.params[n] for n in HYPERPARAMETERS},
                "predicted_loss": float(prediction.mean[0]),
                "predicted_loss_interval": Interval(lo=float(prediction.lo[0]), hi=float(prediction.hi[0]))})
        warnings = rec.warnings
        if held is not None and held.state is not TrialState.RUNNING:
            warnings += (f"trial {trial_id(study._study_id, held.number)} was given up by the "
                         f"time-out before run '{run_id}' asked again: train its values on; the "
                         "run's report joins the study as a configuration of its own",)
        detail = (f"trial {trial.number} of study '{name}': "
                  + (f"handed out before for run '{run_id}', which has not reported yet"
                     if held is not None else
                     "the exploit recommendation (the study's first trial)"
                     if not conditioned.trials.n_completed and rec is best else
                     f"expected improvement of the {model.name} model conditioned on the study's trials"))
        sources = [Source(field=n, name="refine", version=GP_VERSION, detail=detail)
                   for n in space.free]
        return rec.model_copy(update={
            "trial_id": trial_id(study._study_id, trial.number),
            "sources": tuple(s for s in rec.sources if s.field not in space.free) + tuple(sources),
            "warnings": warnings, "model_versions": _versions(rec, study, conditioned)})

    def predict_loss(self, tenant: str, spec: TrainingSpec,
                     queries: RunTable) -> tuple[LossPrediction, tuple[str, ...]] | None:
        """The loss at each query with the exploit's knowledge: the tenant's model conditioned
        on the completed trials of the spec's studies (each run once). PredictLoss has no pins,
        so every study of the spec key counts, in coordinates where all hyperparameters are
        free (with one study, the exploit's own GP at its configurations). None while no
        study of the spec has a completed trial: the model alone answers, as exploit does."""
        names = self.studies.of_spec(tenant, spec)
        if not names:
            return None
        model, _ = self._current(tenant)
        mark = self.sync.mark(tenant, spec)  # one watermark for all the spec's studies
        trials, ids = {}, []
        for name in names:
            study = self.studies.load(name)
            if study is None:  # being created
                continue
            self.sync.sync(tenant, spec, study, mark=mark)
            ids.append(str(study._study_id))
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
                trials.setdefault(t.user_attrs.get("run_id") or (name, t.number), t)
        found = StudyTrials.of(list(trials.values()))
        if not found.n_completed:
            return None
        conditioned = ConditionedModel(model, spec, SearchSpace.unbounded(spec), found)
        mean, sd = conditioned.predict({n: getattr(queries, n) for n in HYPERPARAMETERS})
        half = Z80 * np.hypot(sd, NOISE_SD)  # as the exploit's predicted_loss_interval
        version = (f"{GP_VERSION}:study={','.join(ids)}:completed={found.n_completed}:"
                   f"diverged={len(found.diverged['lr'])}")
        return (LossPrediction(mean=np.exp(mean), lo=np.exp(mean - half), hi=np.exp(mean + half)),
                (version, model.version_))

    def _conditioned(self, study, model, spec: TrainingSpec, pins: Pins) -> ConditionedModel:
        space = Studies.space_of(study).with_pins(pins)
        return ConditionedModel(model, spec, space, StudyTrials.of(study.get_trials(deepcopy=False)))

    def _best(self, conditioned: ConditionedModel, base: Recommendation, pins: Pins,
              study, rule: str = "mean") -> tuple[Recommendation, Params]:
        """The configuration `rule` (one of EXPLOIT_RULES) picks among those the model allows,
        and the recommendation for it: "mean", the argmin of the conditioned mean; "guarded"
        (the exploit default), the unconditioned recommendation kept when the study's reports
        look noisy, else "best_run", the best reported configuration. lr and batch intervals:
        the band of the grid where the conditioned mean is within NEAR_OPTIMAL_EXCESS of the
        grid's minimum, widened to hold the pick."""
        warnings = _noisy_reports(conditioned)
        if rule == "noise_aware":
            conditioned, rule = _noise_aware(conditioned, noisy=bool(warnings))
        if rule == "guarded":
            if warnings and conditioned.lr_ok(params_of(base))[0]:
                return self._kept(base, conditioned, study, warnings), params_of(base)
            rule = "best_run"
        space, spec = conditioned.space, conditioned.spec
        rng = np.random.default_rng(0)
        grid = self._grid(space, spec, base, pins)
        tried = conditioned.trials.completed
        centres = [space.encode(params_of(base))[0]]
        if len(tried["lr"]):
            tried_mean, _ = conditioned.predict(tried)
            centres.append(space_point(space, tried, int(np.argmin(tried_mean))))
        pool = _concat(grid, tried, candidates(space, centres, rng))
        mean, _ = conditioned.predict(pool)
        mean = np.where(conditioned.lr_ok(pool), mean, np.inf)
        if not np.isfinite(mean).any():
            return base, params_of(base)
        fine = candidates(space, [space_point(space, pool, int(np.argmin(mean)))], rng,
                          sobol=0, sd=FINE_SD)
        pool = _concat(pool, fine)
        predicted, sd = conditioned.predict(pool)
        mean = np.where(conditioned.lr_ok(pool), predicted, np.inf)
        i = _choose(rule, mean, sd, conditioned.trials, tried=slice(len(grid["lr"]),
                                                                    len(grid["lr"]) + len(tried["lr"])))
        chosen = _take(pool, i)
        # The band is read off the grid against the grid's own minimum: measured against an
        # argmin found between grid points (a dip the GP puts at a tried run), no grid point
        # would be near and the interval would shrink to the point.
        on_grid = mean[:len(grid["lr"])]
        near = np.isfinite(on_grid) & (on_grid <= on_grid.min() + math.log1p(NEAR_OPTIMAL_EXCESS))
        band = {n: (min(grid[n][near].min(initial=chosen[n][0]), chosen[n][0]),
                    max(grid[n][near].max(initial=chosen[n][0]), chosen[n][0]))
                for n in ("lr", "batch_size_tokens")}
        half = Z80 * math.hypot(sd[i], conditioned.gp.noise_sd)
        # Not from `mean`: best_run may pick a completed run above the model's lr limit (a run
        # is evidence), whose masked mean is infinite.
        loss = math.exp(predicted[i])
        wd = float(chosen["weight_decay"][0])
        update = {
            **{n: float(chosen[n][0]) for n in HYPERPARAMETERS},
            "predicted_loss": loss,
            "predicted_loss_interval": Interval(lo=loss * math.exp(-half), hi=loss * math.exp(half)),
        }
        for n in ("lr", "batch_size_tokens"):
            if n in space.free:
                update[f"{n}_interval"] = Interval(lo=band[n][0], hi=band[n][1])
        if "weight_decay" in space.free and base.weight_decay > 0:
            scale = wd / base.weight_decay
            update["weight_decay_interval"] = Interval(lo=base.weight_decay_interval.lo * scale,
                                                       hi=base.weight_decay_interval.hi * scale)
        trials = conditioned.trials
        detail = (f"argmin of the {conditioned.model.name} model conditioned on study "
                  f"'{study.study_name}' ({trials.n_completed} completed, "
                  f"{len(trials.diverged['lr'])} diverged trials) by a Gaussian process on the "
                  "residuals of ln(loss)")
        return _refined(base.model_copy(update=update), conditioned, study, detail, warnings), chosen

    def _kept(self, base: Recommendation, conditioned: ConditionedModel, study,
              warnings: list[str]) -> Recommendation:
        """The guarded rule's answer once the reports fail the noisy-reports check: the model's
        own recommendation, with its loss predicted by the conditioned model."""
        detail = (f"the {conditioned.model.name} model's recommendation, kept: the "
                  f"{conditioned.trials.n_completed} reported losses of study "
                  f"'{study.study_name}' are too noisy to rank configurations")
        return _refined(self._at(base, conditioned, params_of(base)), conditioned, study, detail,
                        warnings)

    @staticmethod
    def _grid(space: SearchSpace, spec: TrainingSpec, base: Recommendation, pins: Pins) -> Params:
        """lr x batch over the space (each free one on GRID_POINTS), weight decay by the
        timescale rule when free (as the argmin recommender does), QAT fraction the base's."""
        axes = []
        for n in ("lr", "batch_size_tokens"):
            if n in space.bounds:
                lo, hi = space.bounds[n]
                axes.append(np.geomspace(lo, hi, GRID_POINTS))
            else:
                axes.append(np.array([space.fixed[n]]))
        lr, batch = (a.ravel() for a in np.meshgrid(*axes, indexing="ij"))
        wd = free_weight_decay(spec, pins, lr, batch)
        if "weight_decay" in space.bounds:
            wd = np.clip(wd, *space.bounds["weight_decay"])
        else:
            wd = np.full(len(lr), space.fixed["weight_decay"])
        qat = np.full(len(lr), base.qat_fraction if "qat_fraction" in space.bounds
                      else space.fixed["qat_fraction"])
        return space.decode(space.encode({"lr": lr, "batch_size_tokens": batch,
                                          "weight_decay": wd, "qat_fraction": qat}))

    def _at(self, best: Recommendation, conditioned: ConditionedModel, params: Params) -> Recommendation:
        """The exploit recommendation's intervals, with the values and the predicted loss of
        another configuration (an explore trial)."""
        mean, sd = conditioned.predict(params)
        loss, half = math.exp(mean[0]), Z80 * math.hypot(sd[0], NOISE_SD)
        return best.model_copy(update={
            **{n: float(params[n][0]) for n in HYPERPARAMETERS},
            "predicted_loss": loss,
            "predicted_loss_interval": Interval(lo=loss * math.exp(-half), hi=loss * math.exp(half))})

    # ----- reports -----
    def check_report(self, tenant: str, report: RunReport) -> None:
        """Before the run is stored: a trial_id must be one of the tenant's trials."""
        if report.trial_id:
            self.studies.find_trial(tenant, report.trial_id)

    def tell(self, tenant: str, run: RunRecord) -> list[str]:
        """Tells the run's trial, or adds the run as a trial of every existing study of its
        spec whose pins it matches. (A study created later starts with the matching stored
        runs: see predictor/study_sync.py.) Returns warnings for the reporter: why the trial
        it named could not take the run."""
        warnings = []
        if run.trial_id:
            refused = self._tell_trial(tenant, run)
            if refused is None:
                return []
            warnings.append(f"trial {run.trial_id} did not take run {run.run_id!r}: {refused}; "
                            "the run joins the study as a configuration of its own")
        values = {n: getattr(run.hyperparameters, n) for n in HYPERPARAMETERS}
        for name in self._matching_studies(tenant, run.spec, values):
            with self.studies.lock(name):
                study = self.studies.load(name)
                if study is not None and not any(t.user_attrs.get("run_id") == run.run_id
                                                 for t in study.get_trials(deepcopy=False)):
                    add_runs(study, [run])
        return warnings

    def _tell_trial(self, tenant: str, run: RunRecord) -> str | None:
        """None when the run closed (or had closed) its trial; else why the trial cannot take
        it (finished by another run or by the time-out, or run with another spec or other
        values): a trial still running is then closed as FAIL, and the run is added like a
        user's own configuration. A sync may have told the run first (its tell never came, or
        is this one retried): close_trial, under the lock, finds the trial carrying the run_id,
        or the caller finds a trial made from it, and nothing is told twice."""
        name, study_id, trial = self.studies.find_trial(tenant, run.trial_id)
        storage = self.studies.storage()
        with self.studies.lock(name):
            study_pins = Pins(**storage.get_study_user_attrs(study_id).get("pins", {}))
            same_spec = study_name(tenant, run.spec, study_pins) == name
            if close_trial(storage, trial._trial_id, run, same_spec):
                return None
            closed = storage.get_trial(trial._trial_id)
        if closed.user_attrs.get("superseded_by_run") == run.run_id:
            return ("the run's spec or values are not the ones the trial handed out (the trial "
                    "is closed)")
        return TrialStatus.of_finished(closed).detail

    def _matching_studies(self, tenant: str, spec: TrainingSpec, values: dict[str, float]) -> list[str]:
        """Existing studies of the spec whose pins the values satisfy (to the key's 2%)."""
        candidates = list(dict.fromkeys(
            study_name(tenant, spec, Pins(**{n: values[n] for n in pinned}))
            for k in range(len(HYPERPARAMETERS) + 1)
            for pinned in itertools.combinations(HYPERPARAMETERS, k)))
        existing = self.studies.existing(candidates)
        return [name for name in candidates if name in existing]


def _noisy_reports(conditioned: ConditionedModel) -> list[str]:
    """A warning when the study's reported losses disagree with the conditioned model by more
    than its uncertainty allows: the usual cause is reporting one step's training loss, whose
    batch noise (~1% of the loss) is several times the run-to-run noise the GP assumes, and
    under which the best reported run is mostly luck (docs/refinement.md)."""
    n = conditioned.trials.n_completed
    if n < NOISY_REPORTS_MIN_TRIALS:
        return []
    stat, p = conditioned.nearest_trials(NOISY_REPORTS_WINDOW).consistency()
    if p >= NOISY_REPORTS_P:
        return []
    k = min(n, NOISY_REPORTS_WINDOW)
    which = "" if k == n else f" (the {k} of {n} nearest the best configuration)"
    return [f"the {k} {NOISY_REPORTS_MARK} the {conditioned.model.name} model{which} by more "
            f"than its uncertainty allows, whatever their common level (chi-square {stat:.0f} on "
            f"{k - 1} degrees of freedom, p = {p:.1g}): if they are "
            "one step's training loss, report a smoothed or evaluation loss instead (the "
            "hparamrec integrations report the mean over the last 2% of steps); noisy losses "
            "make the best reported run a matter of luck"]


def _noise_aware(conditioned: ConditionedModel, noisy: bool) -> tuple[ConditionedModel, str]:
    """The noise_aware rule (a candidate, not the default): best_run while the reports pass
    the noisy-reports check; once they fail it (`noisy`), the tried configuration with the
    lowest posterior mean under the GP's noise fitted by marginal likelihood (tried_mean)."""
    if not noisy:
        return conditioned, "best_run"
    return conditioned.with_fitted_noise(), "tried_mean"


def _choose(rule: str, mean: np.ndarray, sd: np.ndarray, trials: StudyTrials, tried: slice) -> int:
    if rule == "mean" or not trials.n_completed:
        return int(np.argmin(mean))
    if rule == "upper":
        return int(np.argmin(mean + Z80 * np.hypot(sd, NOISE_SD)))
    if rule == "tried_mean":
        return tried.start + int(np.argmin(mean[tried]))
    if rule == "best_run":
        return tried.start + int(np.argmin(trials.ln_loss))
    raise ValueError(f"unknown exploit rule {rule!r}; choose from {', '.join(EXPLOIT_RULES)}")


def _refined(rec: Recommendation, conditioned: ConditionedModel, study, detail: str,
             warnings: list[str]) -> Recommendation:
    """An exploit recommendation as the study made it: its free fields and predicted loss
    sourced to the study's GP (`detail` says how), the warnings added, the GP's version first."""
    fields = (*conditioned.space.free, "predicted_loss")
    rec = rec.model_copy(update={
        "sources": tuple(s for s in rec.sources if s.field not in fields)
        + tuple(Source(field=n, name="refine", version=GP_VERSION, detail=detail) for n in fields),
        "warnings": rec.warnings + tuple(warnings)})
    return rec.model_copy(update={"model_versions": _versions(rec, study, conditioned)})


def _versions(rec: Recommendation, study, conditioned: ConditionedModel) -> tuple[str, ...]:
    trials = conditioned.trials
    own = (f"{GP_VERSION}:study={study._study_id}:completed={trials.n_completed}:"
           f"diverged={len(trials.diverged['lr'])}")
    return (own,) + tuple(v for v in rec.model_versions if not v.startswith(GP_VERSION))
