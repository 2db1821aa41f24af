"""The refinement loop: reported runs feed one Optuna study per (tenant, spec key)
(predictor/study.py); EXPLORE asks the study for its next trial with the predictor-guided
sampler (predictor/sampler.py); EXPLOIT returns the best configuration of the tenant's model
conditioned on the study's trials (predictor/exploit.py), and today's
recommendation while the study has no completed trial. The study is made by the first explore
of its spec and pins, or by an exploit whose recommendation a stored run of the spec (reported
without an explore, or imported) shows to diverge: then the study's exclusions apply.

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
from predictor import exploit
from predictor.conditioned import NOISE_SD, SIMILAR_BATCH, ConditionedModel, StudyTrials
from predictor.loss_model import LossPrediction
from predictor.prior import Z80, PriorRecommender
from predictor.prior_model import PriorLossModel
from predictor.recommendation import HYPERPARAMETERS, Interval, Recommendation, Source
from predictor.registry import ModelRegistry
from predictor.sampler import PredictorGuidedSampler
from predictor.study import SearchSpace, Studies, study_name, trial_id
from predictor.study_sync import StudySync, add_runs, close_trial
from predictor.table import RunTable
from predictor.trial_timeouts import TIMED_OUT_ATTR, TrialStatus, TrialTimeouts

FOR_RUN_ATTR = "for_run_id"  # a trial's user attribute: the run_id it was handed out for

def _trial_of_run(study, run_id: str):
    """The trial handed out for this run that it may still be training: running, or given up
    by the time-out (a job resumed after a long wait trains its values on); else None."""
    states = (TrialState.RUNNING, TrialState.FAIL)
    return next((t for t in study.get_trials(deepcopy=False, states=states)
                 if t.user_attrs.get(FOR_RUN_ATTR) == run_id
                 and (t.state is TrialState.RUNNING or TIMED_OUT_ATTR in t.user_attrs)), None)




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
                rule: str = exploit.EXPLOIT_RULE) -> Recommendation:
        """The best configuration given everything reported; `rule` (EXPLOIT_RULES) says what
        "best" means once the study has completed trials."""
        model, recommender = self._current(tenant)
        base = recommender.recommend(spec, pins)
        name = study_name(tenant, spec, pins)
        study = self.studies.load(name)
        if study is None:
            if not self._ruled_out(tenant, spec, pins, base):
                return base
            study = self._created(tenant, name, base, spec, pins)
        self.sync.sync(tenant, spec, study)  # one indexed aggregate unless runs were imported
        conditioned = self._conditioned(study, model, spec, pins)
        if not conditioned.trials.n_completed and conditioned.lr_ok(exploit.params_of(base))[0]:
            return base
        return exploit.best(conditioned, base, pins, study, rule)[0]

    def _ruled_out(self, tenant: str, spec: TrainingSpec, pins: Pins, base: Recommendation) -> bool:
        """Whether a stored run of the spec that no study holds yet (reported without an
        explore, or imported) diverged at the recommendation's lr or below, at a similar batch
        (the exclusion ConditionedModel.lr_ok applies to a study's diverged trials)."""
        if pins.lr is not None:
            return False
        return any(base.lr >= lr * (1 - 1e-9)
                   and abs(math.log(base.batch_size_tokens / batch)) <= SIMILAR_BATCH
                   for lr, batch in self.sync.diverged(tenant, spec, pins))

    def _created(self, tenant: str, name: str, base: Recommendation, spec: TrainingSpec,
                 pins: Pins):
        """The spec's study, created with the stored runs of its key and pins unless another
        call has created it meanwhile."""
        with self.studies.lock(name):
            study = self.studies.load(name)
            if study is None:
                study = self.studies.create(name, SearchSpace.around(base, spec, pins), spec, pins)
                self.sync.sync(tenant, spec, study, locked=True)
        return study

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
        if not SearchSpace.around(base, spec, pins).free:  # every trial would be the same run
            raise InvalidArgument.single(
                "pins", "every hyperparameter the spec searches is pinned: there is nothing to "
                        "explore; the exploit mode (MODE_EXPLOIT, --mode exploit) gives the "
                        "loss predicted at these values")
        name = study_name(tenant, spec, pins)
        with self.studies.lock(name):
            study = self.studies.load(name)
            if study is None:
                study = self.studies.create(name, SearchSpace.around(base, spec, pins), spec, pins)
            self.sync.sync(tenant, spec, study, locked=True)  # a new study: every matching run
            self.timeouts.expire(study)
            conditioned = self._conditioned(study, model, spec, pins)
            if conditioned.trials.n_completed or not conditioned.lr_ok(exploit.params_of(base))[0]:
                best, chosen = exploit.best(conditioned, base, pins, study)
            else:
                best, chosen = base, exploit.params_of(base)
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
            rec = exploit.at(best, conditioned, params)
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
        sources = [Source(field=n, name="refine", version=exploit.GP_VERSION, detail=detail)
                   for n in space.free]
        return rec.model_copy(update={
            "trial_id": trial_id(study._study_id, trial.number),
            "sources": tuple(s for s in rec.sources if s.field not in space.free) + tuple(sources),
            "warnings": warnings, "model_versions": exploit.versions(rec, study, conditioned)})

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
        version = (f"{exploit.GP_VERSION}:study={','.join(ids)}:completed={found.n_completed}:"
                   f"diverged={len(found.diverged['lr'])}")
        return (LossPrediction(mean=np.exp(mean), lo=np.exp(mean - half), hi=np.exp(mean + half)),
                (version, model.version_))

    def _conditioned(self, study, model, spec: TrainingSpec, pins: Pins) -> ConditionedModel:
        space = Studies.space_of(study).with_pins(pins)
        return ConditionedModel(model, spec, space, StudyTrials.of(study.get_trials(deepcopy=False)))

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
