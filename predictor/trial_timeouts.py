"""When an explore trial is given up: a trial whose run has not been reported within the time-out
of being handed out, or of its last heartbeat, is closed by the next explore of its study, so
the sampler stops steering around it (docs/refinement.md, "Abandoned trials"). A heartbeat is
what a long run sends to keep its trial."""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from optuna.trial import TrialState

from benchmark_db.errors import InvalidArgument
from predictor.study import Studies

HEARTBEAT_ATTR = "last_heartbeat"  # a trial's user attribute: its last heartbeat, ISO 8601 in UTC


class TrialTimeouts:
    def __init__(self, studies: Studies, timeout_seconds: float = 0.0):
        self.studies = studies
        self.timeout_seconds = timeout_seconds  # 0: explore trials never time out

    def expire(self, study) -> None:
        """Closes the RUNNING trials whose run has said nothing for more than
        timeout_seconds (since the trial was handed out or its last heartbeat, whichever
        is later) as FAIL with user attribute timed_out: without a report they say nothing (the
        sampler ignores such a FAIL), and a pending trial would keep repelling suggestions for
        ever. Called under the study's lock, like the reports that close trials and the
        heartbeats, so a trial is closed by its report or by the time-out, never both, and a
        heartbeat either lands before the time-out is measured or finds the trial closed.
        Optuna stamps datetime_start with the naive local clock of the replica that asked
        (read here in this replica's time zone: replicas share one, UTC); heartbeats are
        stamped in UTC (last_heartbeat, ISO 8601)."""
        if not self.timeout_seconds:
            return
        cutoff = datetime.now(UTC) - timedelta(seconds=self.timeout_seconds)
        storage = self.studies.storage()
        why = (f"no report within {self.timeout_seconds:g} s of the trial being handed out "
               "or of its last heartbeat")
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            alive = _last_alive(trial)
            if alive is not None and alive < cutoff:
                storage.set_trial_user_attr(trial._trial_id, "timed_out", why)
                storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)

    def heartbeat(self, tenant: str, trial_id: str) -> "TrialStatus":
        """Records that the run of one of the tenant's explore trials is still going (user
        attribute last_heartbeat, now in UTC), so expire measures its time-out from now; a
        finished trial is left as it is, and the answer says how it ended. Two reads and one
        write under the study's lock: no sync, no refit, the cached recommendations stay
        valid (nothing they depend on changed)."""
        if not trial_id:
            raise InvalidArgument.single("trial_id", "required: the trial_id of an explore "
                                                     "recommendation")
        name, _, found = self.studies.find_trial(tenant, trial_id)
        storage = self.studies.storage()
        with self.studies.lock(name):
            trial = storage.get_trial(found._trial_id)  # the lock's last holder may have closed it
            if trial.state is not TrialState.RUNNING:
                return TrialStatus.of_finished(trial)
            now = datetime.now(UTC)
            storage.set_trial_user_attr(trial._trial_id, HEARTBEAT_ATTR, now.isoformat())
        expires = (now + timedelta(seconds=self.timeout_seconds)
                   if self.timeout_seconds else None)
        return TrialStatus("running", "heartbeat recorded" + (
            f"; the trial times out {self.timeout_seconds:g} s after its last heartbeat"
            if expires else "; trials never time out on this server"), "", now, expires)


def _last_alive(trial) -> datetime | None:
    """When the trial last showed life, timezone-aware: handed out (datetime_start, the naive
    local clock of the replica that asked) or its last heartbeat, whichever is later."""
    if trial.datetime_start is None:
        return None
    start = trial.datetime_start
    alive = start.astimezone(UTC) if start.tzinfo is None else start
    beat = trial.user_attrs.get(HEARTBEAT_ATTR)
    if beat:
        try:
            beat_at = datetime.fromisoformat(beat)
        except (TypeError, ValueError):  # written by hand: the start alone counts
            return alive
        alive = max(alive, beat_at if beat_at.tzinfo else beat_at.replace(tzinfo=UTC))
    return alive


@dataclass(frozen=True)
class TrialStatus:
    """Where an explore trial stands, as a heartbeat answers: state is running, reported (run_id
    closed it), timed_out, superseded (run_id, of other values or another spec, closed it) or
    closed (finished some other way); heartbeat_at and expires_at (None: never) only while
    running."""

    state: str
    detail: str
    run_id: str = ""
    heartbeat_at: datetime | None = None
    expires_at: datetime | None = None

    @classmethod
    def of_finished(cls, trial) -> "TrialStatus":
        attrs = trial.user_attrs
        if "timed_out" in attrs:
            return cls("timed_out", f"the trial timed out ({attrs['timed_out']}); a run reported "
                                    "against it is stored and joins the study as a "
                                    "configuration of its own")
        if "superseded_by_run" in attrs:
            return cls("superseded", f"the trial was closed by run {attrs['superseded_by_run']!r}, "
                                     "reported against it with other values or another spec",
                       run_id=attrs["superseded_by_run"])
        if attrs.get("run_id"):
            return cls("reported", f"the trial was closed by run {attrs['run_id']!r} "
                                   f"({trial.state.name.lower()})", run_id=attrs["run_id"])
        return cls("closed", f"the trial is {trial.state.name.lower()} without a run of its own")
