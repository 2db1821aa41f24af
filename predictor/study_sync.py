"""Stored runs reach the studies of their spec, whichever way they were stored.

A run reported through the service is told to its studies at once (Refiner.tell). Runs
imported with `hparamrec import` go into the database without a server, so a study also
catches up on the tenant's stored runs of its spec key (and pins) that it has not seen: when
it is created, and whenever it is explored or read (exploit, PredictLoss) after such runs
arrived.

Cheap on the hot path (the exploit recommendation is computed on every cache miss): the
watermark is (count, largest id) of the tenant's stored runs in the spec key's size bins, one
aggregate over the runs index on (tenant, n_params, n_active_params, n_tokens), compared with
the watermark this process last synced the study at. Only when it moved are the bins' runs
read (narrow columns), and only when some are missing from the study is its lock taken. A
count as well as an id: a run whose id was allocated before another's but committed after it
still changes the count. Idempotent: a trial made from a run carries its run_id, checked
under the study's lock, so a run is never added twice (here, by a report, or by a replica).

A run reported against one of the study's own trials is stored before it is told; if the tell
never happens (the process died in between, or the tell raised), the study catches up here as
the report would have: a trial still RUNNING is closed from the stored run (close_trial, the
report's own code), and a trial that cannot take it any more (closed by the time-out, or by
another run) gets the run as a trial of its own (add_runs, as a late report). Both under the
study's lock, which the report's tell holds too, and both see what the other did: a trial
closed by a run carries its run_id. So whichever of the report and a sync (of this replica or
another) comes first tells the run, and the other finds it told.

Such a run may be of another size than its trial (the launcher ran a different model than the
trial was handed out for), outside the bins the study reads. So the sync also reads the runs
reported against its RUNNING trials, whatever their spec (index on (tenant, trial_id), the
trials from Optuna's table in the same statement), and closes such a trial as FAIL with
superseded_by_run, as the report's tell does (close_trial); the run itself reaches the studies
of its own spec through their syncs (it is in their bins), as a user's own configuration, as
the tell's would. The watermark has a second part for them: (count, largest id) of the runs
reported against the study's running trials, read in the same statement as the bins' (one
statement still when nothing changed). In the steady state there are none (a run against a
running trial is a tell in flight, or lost). Unlike the bins' runs, they leave the set (their
trial closes), but never come back, and a sync closes the trial of every one it counted: the
runs a later sync counts are others, so their (count, largest id) differs unless both sets
are empty (two disjoint sets have different largest ids).
"""

import math
from typing import NamedTuple

import optuna
import sqlalchemy as sa
from optuna.trial import TrialState, create_trial
from sqlalchemy.sql.elements import ColumnElement

from benchmark_db.records import Pins, RunRecord, RunStatus, TrainingSpec
from benchmark_db.schema import runs
from benchmark_db.store import RunStore
from predictor.recommendation import HYPERPARAMETERS
from predictor.study import TRIAL_ID, SearchSpace, Studies, bin_edges, study_name

MATCH_TOLERANCE = 0.01  # values within 1% of the trial's are its own (printed values are rounded)
_SPEC = ("n_params", "n_active_params", "n_tokens", "seq_len", "architecture", "optimizer",
         "weight_bits")
_TRIALS = sa.table("trials", sa.column("study_id"), sa.column("number"),
                   sa.column("state"))  # Optuna's RDB schema, in the same database


class StudySync:
    def __init__(self, store: RunStore, studies: Studies):
        self.store = store
        self.studies = studies
        self._synced: dict[str, tuple[int, ...]] = {}  # study name -> watermark it was synced at

    def mark(self, tenant: str, spec: TrainingSpec) -> tuple[int, int]:
        """(count, largest id) of the tenant's stored runs in the spec key's size bins."""
        with self.store.engine.connect() as conn:
            count, top = conn.execute(_watermark(_in_bins(tenant, spec))).one()
        return int(count), int(top)

    def diverged(self, tenant: str, spec: TrainingSpec, pins: Pins) -> list[tuple[float, float]]:
        """(lr, batch_size_tokens) of the tenant's stored diverged runs of the spec's key whose
        values match the pins: what a study of theirs would hold as diverged trials."""
        c = runs.c
        query = sa.select(*(c[n] for n in (*_SPEC, *HYPERPARAMETERS))).where(
            *_in_bins(tenant, spec), c.status == RunStatus.DIVERGED.value)
        with self.store.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        name, pinned = study_name(tenant, spec, pins), tuple(pins.model_dump(exclude_none=True))
        return [(row["lr"], row["batch_size_tokens"]) for row in rows
                if _study_of_row(tenant, row, pinned) == name]

    def _mark(self, tenant: str, spec: TrainingSpec, study_id: int,
              mark: tuple[int, int] | None) -> tuple[int, ...]:
        """The study's watermark: the bins' (mark, when the caller read it for all the spec's
        studies; else read here) and (count, largest id) of the runs reported against its
        running trials; one statement."""
        strays = _watermark(_against_running(tenant, study_id)).subquery()
        if mark is None:
            bins = _watermark(_in_bins(tenant, spec)).subquery()
            query = sa.select(*bins.c, *strays.c).select_from(bins.join(strays, sa.true()))
        else:
            query = sa.select(*strays.c)
        with self.store.engine.connect() as conn:
            got = tuple(int(v) for v in conn.execute(query).one())
        return got if mark is None else (*mark, *got)

    def sync(self, tenant: str, spec: TrainingSpec, study: optuna.Study, locked: bool = False,
             mark: tuple[int, int] | None = None) -> int:
        """Tells the study the stored runs of its key and pins that it has not seen; returns
        how many. `locked`: the caller holds the study's lock. `mark`: the watermark, when the
        caller already read it for this spec.

        Why a watermark that moves only when runs are stored is enough, a run whose tell failed
        included: it is read before the runs are, so every run it counts is among the rows read
        next, and every row read is settled for good by this sync (told, closing its trial or
        as a trial of its own; or carried by a trial already; or not this study's: another
        key, or values its space cannot hold). None is left for later, so a sync that finds
        the same mark has nothing to do. A run committed after the mark was read (its tell
        still to come, or failed) moves the count: the next sync reads the rows again. The
        same holds for the runs reported against the study's running trials from outside its
        bins (module docstring): each one read is settled, its trial closed."""
        name = study.study_name
        mark = self._mark(tenant, spec, study._study_id, mark)  # read first: later runs move it
        if self._synced.get(name) == mark:
            return 0
        told = 0
        if locked:
            told = self._tell(tenant, study, self._missing(tenant, spec, study))
        elif self._missing(tenant, spec, study):
            with self.studies.lock(name):
                told = self._tell(tenant, study, self._missing(tenant, spec, study))  # again, locked
        self._synced[name] = mark
        return told

    def _tell(self, tenant: str, study: optuna.Study, missing: list["Missing"]) -> int:
        """Under the study's lock: what the runs' reports would have told the study (see
        Missing); returns how many runs reached it."""
        storage = self.studies.storage()
        added, closed = [], 0
        for run_id, trial_id, ours in missing:
            run = self.store.get(tenant, run_id)
            if trial_id is not None and close_trial(storage, trial_id, run, same_spec=ours):
                closed += 1
            elif ours:
                added.append(run)
        add_runs(study, added)
        return closed + len(added)

    def _missing(self, tenant: str, spec: TrainingSpec, study: optuna.Study) -> list["Missing"]:
        """What the study has not been told of the tenant's stored runs in its key's bins, and
        of those reported against its running trials, in the order they were stored. Called
        again under the lock before acting on it: a run found here may be told by its report
        in the meantime."""
        attrs = study.user_attrs  # one query
        pinned, space = tuple(attrs.get("pins", {})), SearchSpace.from_json(attrs["space"])
        columns = [runs.c[c] for c in ("id", "run_id", "trial_id", *_SPEC, *HYPERPARAMETERS)]
        query = sa.union(sa.select(*columns).where(*_in_bins(tenant, spec)),
                         sa.select(*columns).where(*_against_running(tenant, study._study_id)))
        with self.store.engine.connect() as conn:
            rows = conn.execute(query.order_by("id")).mappings().all()
        # The trials after the runs: a trial a run was reported against existed before the run
        # was stored, so it is among them, and a report that told its run meanwhile shows.
        trials = study.get_trials(deepcopy=False)
        seen = {t.user_attrs.get("run_id") for t in trials}
        running = {t.number: t._trial_id for t in trials if t.state is TrialState.RUNNING}
        missing = []
        for row in rows:
            if row["run_id"] in seen:
                continue
            number = _own_trial(row["trial_id"], study._study_id)
            trial_id = running.get(number) if number is not None else None
            ours = (_study_of_row(tenant, row, pinned) == study.study_name
                    and space.accepts({n: row[n] for n in HYPERPARAMETERS}))
            if ours or trial_id is not None:
                missing.append(Missing(row["run_id"], trial_id, ours))
        return missing


class Missing(NamedTuple):
    """A stored run the study has not been told, and what its report would have told it.

    trial_id: Optuna's id of the study's RUNNING trial the run was reported against, closed
    from the run (close_trial), or None. ours: the run's key and pins are the study's (and its
    space can hold its values), so the run becomes a trial of its own when it has no such
    trial (a user's configuration, an imported run; or a late report: its trial timed out or
    was closed by another run) or when the trial cannot take it (other values). A run of
    another key reported against a running trial only closes it as superseded."""

    run_id: str
    trial_id: int | None
    ours: bool


def _study_of_row(tenant: str, row, pinned: tuple[str, ...]) -> str:
    """The name of the study a stored run (a row with the _SPEC and HYPERPARAMETERS columns)
    belongs to among those pinning `pinned`."""
    return study_name(tenant, TrainingSpec(**{c: row[c] for c in _SPEC}),
                      Pins(**{n: row[n] for n in pinned}))


def _in_bins(tenant: str, spec: TrainingSpec) -> list[ColumnElement]:
    """WHERE clauses: the tenant's runs whose spec is in the key's bins (a hair wider: the key
    is compared exactly afterwards)."""
    c = runs.c
    clauses = [c.tenant == tenant, c.seq_len == spec.seq_len, c.weight_bits == spec.weight_bits,
               c.architecture == spec.architecture.value, c.optimizer == spec.optimizer.value]
    for name in ("n_params", "n_active_params", "n_tokens"):
        clauses.append(c[name].between(*bin_edges(getattr(spec, name))))
    return clauses


def _against_running(tenant: str, study_id: int) -> list[ColumnElement]:
    """WHERE clauses: the tenant's runs reported against a RUNNING trial of the study, by the
    trial ids handed out ("<study id>-<trial number>", study.trial_id), on the runs index on
    (tenant, trial_id)."""
    t = _TRIALS.c
    handed_out = (sa.cast(t.study_id, sa.String) + "-" + sa.cast(t.number, sa.String))
    running = sa.select(handed_out).where(t.study_id == study_id,
                                          sa.cast(t.state, sa.String) == TrialState.RUNNING.name)
    return [runs.c.tenant == tenant, runs.c.trial_id.in_(running)]


def _watermark(clauses: list[ColumnElement]) -> sa.Select:
    """(count, largest id) of the runs the clauses select."""
    return sa.select(sa.func.count().label("n"),
                     sa.func.coalesce(sa.func.max(runs.c.id), 0).label("top")).where(*clauses)


def _own_trial(trial_id: str, study_id: int) -> int | None:
    """The number of the trial of this study that the id names; None for another study's."""
    match = TRIAL_ID.fullmatch(trial_id or "")
    return int(match[2]) if match is not None and int(match[1]) == study_id else None


def close_trial(storage: optuna.storages.BaseStorage, trial_id: int, run: RunRecord,
                same_spec: bool) -> bool:
    """Tells a trial the run reported against it; under the study's lock (the trial is read
    under it: the lock's previous holder may have closed it). `trial_id`: Optuna's id of the
    trial; `same_spec`: the run's spec and pins are the study's key. True when the run closed
    (or had closed) the trial: COMPLETE with its loss; FAIL with outcome=diverged or failed.
    False when the trial cannot take it (finished by another run or by the time-out, or run
    with another spec or other values): a trial still running is then closed as FAIL with
    superseded_by_run, and the run belongs in the study as a configuration of its own
    (add_runs)."""
    trial = storage.get_trial(trial_id)
    if trial.user_attrs.get("run_id") == run.run_id:
        return True
    if trial.state is not TrialState.RUNNING:
        return False
    same_values = all(math.isclose(trial.params[n], getattr(run.hyperparameters, n),
                                   rel_tol=MATCH_TOLERANCE, abs_tol=1e-12)
                      for n in HYPERPARAMETERS)
    if not (same_spec and same_values):
        storage.set_trial_user_attr(trial_id, "superseded_by_run", run.run_id)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        return False
    for key, value in run_attrs(run).items():
        storage.set_trial_user_attr(trial_id, key, value)
    if run.outcome.status is RunStatus.COMPLETED:
        storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [run.outcome.final_loss])
    else:
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
    return True


def add_runs(study: optuna.Study, records: list[RunRecord]) -> None:
    """Runs as finished trials with their own values (the distributions widened to hold
    them), each with the trial it was reported against, if any (a late report of a trial that
    timed out, a report with other values, a trial of another study of the spec); runs a
    log-scaled axis cannot hold (weight decay 0) are left out."""
    space = Studies.space_of(study)
    trials = []
    for run in records:
        values = {n: getattr(run.hyperparameters, n) for n in HYPERPARAMETERS}
        if not space.accepts(values):
            continue
        completed = run.outcome.status is RunStatus.COMPLETED
        trials.append(create_trial(
            state=TrialState.COMPLETE if completed else TrialState.FAIL,
            value=run.outcome.final_loss if completed else None,
            params=values, distributions=space.widened(values),
            user_attrs=run_attrs(run) | {"source": "reported configuration"}
            | ({"reported_trial_id": run.trial_id} if run.trial_id else {})))
    study.add_trials(trials)


def run_attrs(run: RunRecord) -> dict:
    """What a trial made from (or closed by) a run records: its run_id and its outcome."""
    out = {"run_id": run.run_id, "outcome": run.outcome.status.value}
    if run.outcome.status is not RunStatus.COMPLETED and run.outcome.final_loss is not None:
        out["last_loss"] = run.outcome.final_loss
    return out
