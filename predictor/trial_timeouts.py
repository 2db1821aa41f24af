"""When an explore trial is given up: a trial whose run has not been reported within the time-out
of being handed out, or of its last heartbeat, is closed by the next explore of its study, so
the sampler stops steering around it (docs/refinement.md, "Abandoned trials"). A heartbeat is
what a long run sends to keep its trial; one that says how often they come has its trial given
up after MISSED_HEARTBEATS of them went missing, if that is sooner."""

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from optuna.trial import TrialState

from benchmark_db.errors import InvalidArgument
from predictor.study import Studies

HEARTBEAT_ATTR = "last_heartbeat"  # a trial's user attribute: its last heartbeat, ISO 8601 in UTC
INTERVAL_ATTR = "heartbeat_interval_seconds"  # how often its launcher said it sends them
TIMED_OUT_ATTR = "timed_out"  # set on a trial given up: why
# A trial whose launcher said how often it sends heartbeats is given up after this many went
# missing (if that is before the time-out): its run has most likely died. Three, so one or two
# heartbeats lost to a network blip or a slow step do not close a live trial.
MISSED_HEARTBEATS = 3


class TrialTimeouts:
    def __init__(self, studies: Studies, timeout_seconds: float = 0.0):
        self.studies = studies
        self.timeout_seconds = timeout_seconds  # 0: explore trials never time out

    def expire(self, study) -> None:
        """Closes the RUNNING trials past their deadline (_deadline: timeout_seconds after the
        trial was handed out or its last heartbeat, sooner if its launcher said how often it
        sends them and MISSED_HEARTBEATS went missing) as FAIL with user attribute timed_out:
        without a report they say nothing (the sampler ignores such a FAIL), and a pending
        trial would keep repelling suggestions for ever. Called under the study's lock, like
        the reports that close trials and the heartbeats, so a trial is closed by its report or
        by the time-out, never both, and a heartbeat either lands before the time-out is
        measured or finds the trial closed."""
        if not self.timeout_seconds:
            return
        now = datetime.now(UTC)
        storage = self.studies.storage()
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            deadline, why = self._deadline(trial)
            if deadline is not None and deadline < now:
                _give_up(storage, trial._trial_id, why)

    def heartbeat(self, tenant: str, trial_id: str, interval_seconds: float = 0.0) -> "TrialStatus":
        """Records that the run of one of the tenant's explore trials is still going (user
        attribute last_heartbeat, now in UTC), so expire measures its time-out from now;
        interval_seconds (optional): how often the launcher sends them, after
        MISSED_HEARTBEATS of which the trial is given up sooner. A finished trial is left as
        it is, and the answer says how it ended. A few reads and writes under the study's lock:
        no sync, no refit, the cached recommendations stay valid (nothing they depend on
        changed)."""
        if not trial_id:
            raise InvalidArgument.single("trial_id", "required: the trial_id of an explore "
                                                     "recommendation")
        if not math.isfinite(interval_seconds) or interval_seconds < 0:
            raise InvalidArgument.single(
                "interval_seconds",
                f"must be a finite number of seconds >= 0 (0: not said), not {interval_seconds!r}")
        name, _, found = self.studies.find_trial(tenant, trial_id)
        storage = self.studies.storage()
        with self.studies.lock(name):
            trial = storage.get_trial(found._trial_id)  # the lock's last holder may have closed it
            if trial.state is not TrialState.RUNNING:
                return TrialStatus.of_finished(trial)
            now = self.alive(trial)
            if interval_seconds:
                storage.set_trial_user_attr(trial._trial_id, INTERVAL_ATTR, interval_seconds)
            trial = storage.get_trial(found._trial_id)
        expires, _ = self._deadline(trial)
        detail = (f"heartbeat recorded; without a report or another heartbeat the trial times "
                  f"out at {expires:%Y-%m-%d %H:%M:%S} UTC" if expires
                  else "heartbeat recorded; trials never time out on this server")
        return TrialStatus("running", detail, "", now, expires)

    def give_back(self, tenant: str, trial_id: str) -> None:
        """Closes a running trial whose explore call ended before its answer reached the
        launcher (its deadline passed while it waited behind a burst of others), as the
        time-out would: nobody runs it, and left running it repelled suggestions for the
        time-out (a week by default). A report against it later is still stored and used."""
        name, _, found = self.studies.find_trial(tenant, trial_id)
        storage = self.studies.storage()
        with self.studies.lock(name):
            trial = storage.get_trial(found._trial_id)
            if trial.state is TrialState.RUNNING:
                _give_up(storage, trial._trial_id, "its explore call ended before the answer was sent")

    def alive(self, trial) -> datetime:
        """Records that the running trial's run showed life now (its last heartbeat); under
        the study's lock."""
        now = datetime.now(UTC)
        self.studies.storage().set_trial_user_attr(trial._trial_id, HEARTBEAT_ATTR, now.isoformat())
        return now

    def _deadline(self, trial) -> tuple[datetime | None, str]:
        """When the trial is given up, and why (None: never): timeout_seconds after it last
        showed life, or MISSED_HEARTBEATS times its launcher's interval after its last
        heartbeat, whichever comes first."""
        alive = _last_alive(trial)
        if not self.timeout_seconds or alive is None:
            return None, ""
        deadline = alive + timedelta(seconds=self.timeout_seconds)
        why = (f"no report within {self.timeout_seconds:g} s of the trial being handed out "
               "or of its last heartbeat")
        quiet = MISSED_HEARTBEATS * float(trial.user_attrs.get(INTERVAL_ATTR) or 0)
        beat = _utc(trial.user_attrs.get(HEARTBEAT_ATTR))
        if 0 < quiet < self.timeout_seconds and beat is not None:  # any interval: no overflow
            missed = beat + timedelta(seconds=quiet)
            if missed < deadline:
                deadline = missed
                why = (f"no report within {MISSED_HEARTBEATS} heartbeat intervals "
                       f"({MISSED_HEARTBEATS} x {quiet / MISSED_HEARTBEATS:g} s, as its launcher "
                       "said) of its last heartbeat")
        return deadline, why


def _give_up(storage, trial_id: int, why: str) -> None:
    """Closes a running trial as FAIL with user attribute timed_out = why: without a report
    it says nothing (the sampler ignores such a FAIL)."""
    storage.set_trial_user_attr(trial_id, TIMED_OUT_ATTR, why)
    storage.set_trial_state_values(trial_id, TrialState.FAIL)


def _last_alive(trial) -> datetime | None:
    """When the trial last showed life, timezone-aware: handed out (datetime_start, the naive
    local clock of the replica that asked) or its last heartbeat, whichever is later."""
    if trial.datetime_start is None:
        return None
    start = trial.datetime_start
    alive = start.astimezone(UTC) if start.tzinfo is None else start
    beat = _utc(trial.user_attrs.get(HEARTBEAT_ATTR))
    return alive if beat is None else max(alive, beat)


def _utc(stamp) -> datetime | None:
    """A heartbeat's ISO 8601 stamp as an aware datetime (UTC if it names no zone); None when
    absent or not a stamp (written by hand: the start alone counts)."""
    if not stamp:
        return None
    try:
        when = datetime.fromisoformat(stamp)
    except (TypeError, ValueError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


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
        if TIMED_OUT_ATTR in attrs:
            return cls("timed_out", f"the trial timed out ({attrs[TIMED_OUT_ATTR]}); a run reported "
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
