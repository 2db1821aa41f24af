"""One training run, from its recommendation to its report: what the launcher integrations share,
and `tracked_run` for custom training loops.

    with tracked_run({"n_params": "1.3B", "n_tokens": "100B"}) as run:
        hp = run.hyperparameters              # the recommendation, fetched on entry
        ...
        for step, batch in enumerate(data, 1):
            loss = train_step(batch)
            if not run.log(loss, step=step):  # NaN/inf: reported as diverged at once
                break
    # on exit: reported as completed with the mean of the losses logged near the end

The final loss reported for a completed run is not one step's loss, whose per-batch noise (on
the Step Law sweep about 1.2% of the loss, 6-8x the run-to-run noise the refinement assumes)
would make a worse configuration look best: it is the mean of the losses logged over the last
`final_loss_window` (default 2%) of the steps run, at least the last loss logged. With cosine
decay the loss is nearly flat at the end, so a window this short adds little bias, while a run
logged every step averages a few hundred losses (10,000 steps: 200). A loss logged at a step
stands for the steps since the previous one logged (a trainer logging every n steps logs the
mean over those n), and counts in the mean for as many of them as are in the window. Losses
logged without a step fall back to the mean of the last `final_loss_count` (default 100) logged.
`final_loss_window=0` reports the last loss logged. A diverged run reports its last finite loss.
The run's metadata label `final_loss` says which.

A run of an explore trial (mode="explore") also tells the service it is still going: one
heartbeat when the trial is handed out (saying the interval, so a job that dies before its first
step frees its trial after 3 missed ones), then from log() (and the callbacks' step hooks) at
most every `heartbeat_seconds` (default 600; 0: never), so a run longer than the service's trial
time-out keeps its trial. Heartbeats never stop training: a failure is logged once as a warning
(a service that predates heartbeats is not asked again), and a trial found finished (e.g. timed
out while the service was unreachable) is logged once and sent no more heartbeats; its report is
still stored, and joins the study as a configuration of its own.

The run is reported once, with a run_id fixed when the run is created (given, else
$HPARAMREC_RUN_ID, else random), so retries and repeated reports cannot store it twice. While
the service is unreachable (a restart, a failover) the report keeps trying for
`report_patience_seconds` (default 300); past that it is saved to a file (clients/unsent.py:
$HPARAMREC_UNSENT_DIR, else ~/.cache/hparamrec/unsent) that `hparamrec send-unsent` sends
later. A report the service refuses (or any other failure to report) is saved there too, with
the reason logged, and never raised: the training run matters more than its record, and the
record is not lost. What a report would refuse is checked when the run is created, before any
training (report_checks.py): the hyperparameters or fallback given, the metadata (text labels,
at most 64 with the 3 the integration adds), the run_id. A "completed" final loss over
MAX_COMPLETED_LOSS nats per token is a blow-up, reported as diverged.
"""

import logging
import math
import os
import re
import shlex
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from clients import convert, unsent
from clients.client import Client
from clients.errors import (CancelledError, DeadlineExceededError, HparamrecError,
                            InvalidArgumentError, NotFoundError, UnavailableError,
                            UnimplementedError)
from clients.integrations.distributed import ProcessGroup, from_rank_zero, torch_process_group
from clients.integrations.final_loss import FINAL_LOSS_COUNT, FINAL_LOSS_WINDOW, FinalLoss
from clients.integrations.report_checks import (DEFAULT_SEQ_LEN, MAX_COMPLETED_LOSS,
                                                hyperparameter_violations, metadata_violations,
                                                raise_if, run_id_violations)
from clients.models import (HeartbeatResult, Hyperparameters, Mode, Pins, Recommendation,
                            ReportResult, Run, RunOutcome, RunReport, RunStatus, TrainingSpec,
                            TrialState)

log = logging.getLogger("hparamrec.integrations")

# Exceptions that stop a run before its end and say nothing of its hyperparameters: a preemption
# (SIGTERM, which schedulers' handlers and Lightning turn into SystemExit), Ctrl-C, running out of
# memory (also OutOfMemoryError, by name: torch's). Such a run is not reported: the job resumed or
# requeued under the same run_id reports it, and an explore is handed its trial again; a report
# now would be the run's for good, as a run_id is stored once.
_INTERRUPTIONS = (KeyboardInterrupt, SystemExit, MemoryError)


def _interrupted(error: BaseException) -> bool:
    return isinstance(error, _INTERRUPTIONS) or type(error).__name__ == "OutOfMemoryError"

# A run of an explore trial sends a heartbeat at most this often: far below any sensible trial
# time-out (the service's default is a week), and one small write per run every 10 minutes.
HEARTBEAT_SECONDS = 600.0
# The deadline of each heartbeat attempt: an unreachable service stalls training this long at
# most (times the client's attempts) once per heartbeat_seconds.
HEARTBEAT_TIMEOUT_SECONDS = 5.0
# How long the recommendation at a run's start keeps trying while the service is unreachable:
# long enough for a restart, short enough that a job with no fallback fails while it is fresh.
RECOMMEND_PATIENCE_SECONDS = 60.0
# How long the report at a run's end keeps trying while the service is unreachable: a restart
# takes seconds, a deploy or a database failover a minute or two. Past it, the report is saved
# for `hparamrec send-unsent` and the job ends.
REPORT_PATIENCE_SECONDS = 300.0


def peak_lr(param_groups) -> float:
    """The peak learning rate of an optimizer's groups, as schedulers leave it: OneCycleLR keeps
    it in `max_lr` (its `initial_lr` is max_lr / div_factor); the others in `initial_lr` (the
    group's `lr` is the current, scheduled one) or, without a scheduler, in `lr`."""
    return max(g.get("max_lr", g.get("initial_lr", g["lr"])) for g in param_groups)


def steps_for_tokens(run: "TrackedRun", batch: float) -> int | None:
    """The optimizer steps in which a run at `batch` tokens per step sees its spec's n_tokens:
    the resolved spec's (the recommendation's, the stored run's), else the spec's as given (a
    fallback, the caller's own values). None, with a warning, when no n_tokens is known (a spec
    given by compute_flops that the service never resolved): the trainer's steps are kept."""
    n_tokens = run.resolved_spec.n_tokens
    if n_tokens is None:
        log.warning("hparamrec: run %s: the spec gives no n_tokens (and the service did not "
                    "resolve it), so max_steps is kept as given", run.run_id)
        return None
    return max(1, math.ceil(n_tokens / batch))


# An exception is a divergence when it says the numbers blew up: a FloatingPointError (numpy's
# seterr), or a message naming a NaN or infinite value (torch's anomaly mode: "returned nan
# values") or the loss scale (fp16 loss scalers give up on overflowing gradients). Any other (a
# bug, a lost node, a full disk) says nothing about the hyperparameters: reported as diverged,
# it would rule out every higher lr at that batch for the study; reported at all, the job
# requeued under the same run_id could not report (a run_id is stored once) nor, exploring,
# even start (an explore for a stored run is refused). So it is left to that job, like an
# interruption.
_NUMERICAL = re.compile(r"\b(nan|inf|infinite|non-finite|not finite|loss scale)\b", re.IGNORECASE)


def _numerical(error: BaseException) -> bool:
    return isinstance(error, FloatingPointError) or bool(_NUMERICAL.search(str(error)))


def outcome_of_exception(error: BaseException, last_loss: float | None) -> RunOutcome | None:
    """Diverged, at its last loss, for a numerical error. None (not reported: the run may be
    resumed or requeued under its run_id, which then reports it) for any other: an
    interruption (Ctrl-C, a preemption's SystemExit, out-of-memory), a bug, a lost node."""
    return RunOutcome.diverged(last_loss) if _numerical(error) and not _interrupted(error) else None


class TrackedRun:
    """A run's hyperparameters and losses, reported once.

    spec: the TrainingSpec (a model, dict or proto message; sizes accept "1.3B").
    hyperparameters: what the run uses; if None, start() fetches a recommendation (with pins)
        and uses it. Change what the trainer actually ended up using with use().
    mode: "exploit" (the best configuration known) or "explore" (the next trial of the spec's
        study: the run then reports against its trial_id, and the sweep refines itself).
    client: a Client to use (not closed here); else one is made from server/api_key (and their
        HPARAMREC_* variables) and closed after the report.
    reporting: whether this process reports the run; default: rank 0 of `group` (True outside
        a distributed job).
    group: the processes of a distributed job that train this run (a ProcessGroup); default:
        torch.distributed's default group when it is initialized with more than one process.
        Rank 0 fetches the recommendation and the others take it (see distributed.py), so
        every process trains with the same values and an explore hands out one trial per job.
    final_loss_window: a completed run reports the mean of the losses logged over this fraction
        of its steps, at the end (at least the last loss logged), each weighted by the steps since
        the previous loss logged that are in the window; 0 reports the last loss logged.
    final_loss_count: if losses are logged without steps, the mean of the last this many.
    heartbeat_seconds: with an explore trial, log() sends a heartbeat at most this often, so
        the trial does not time out while the run goes on (0: never).
    report_patience_seconds: how long the report keeps trying while the service is unreachable
        before it is saved to unsent_dir (default: clients.unsent.unsent_dir()).
    recommend_patience_seconds: how long start() keeps trying for a recommendation while the
        service is unreachable; then it raises, or with `fallback` given trains with those
        hyperparameters (logged as a warning; the run is reported as usual).

    hyperparameters, fallback, metadata (text labels: at most 61 of the caller's own, as the
    integration adds integration, steps_logged and final_loss to the service's 64) and run_id
    are checked as a report would check them: bad ones raise InvalidArgumentError here, naming
    the field (e.g. "fallback.weight_decay", "metadata.gpus"), before any training.
    """

    def __init__(self, spec: TrainingSpec | dict, *, hyperparameters: Hyperparameters | dict | None = None,
                 pins: Pins | dict | None = None, client: Client | None = None,
                 server: str | None = None, api_key: str | None = None, run_id: str | None = None,
                 metadata: dict[str, str] | None = None, integration: str = "tracked_run",
                 reporting: bool | None = None, group: ProcessGroup | None = None,
                 mode: str = "exploit",
                 final_loss_window: float = FINAL_LOSS_WINDOW,
                 final_loss_count: int = FINAL_LOSS_COUNT,
                 heartbeat_seconds: float = HEARTBEAT_SECONDS,
                 report_patience_seconds: float = REPORT_PATIENCE_SECONDS,
                 unsent_dir: str | Path | None = None,
                 recommend_patience_seconds: float = RECOMMEND_PATIENCE_SECONDS,
                 fallback: Hyperparameters | dict | None = None):
        self.spec = convert.coerce(spec, TrainingSpec, "spec")
        self.pins = convert.coerce(pins, Pins, "pins") if pins is not None else Pins()
        self.hyperparameters = (convert.coerce(hyperparameters, Hyperparameters, "hyperparameters")
                                if hyperparameters is not None else None)
        self.run_id = run_id or os.environ.get("HPARAMREC_RUN_ID") or uuid.uuid4().hex
        if metadata is not None and not isinstance(metadata, dict):
            raise_if(metadata_violations(metadata))
        self.metadata = {"integration": integration, **(metadata or {})}
        self._reporting = reporting
        self.group = group
        self.mode = Mode(mode)  # a typo fails here, before any training
        self.final_losses = FinalLoss(final_loss_window, final_loss_count)  # so does a bad window
        self.recommendation: Recommendation | None = None
        self.last_loss: float | None = None
        # How the reported final loss was computed (the run's metadata label "final_loss").
        self.final_loss_label: str | None = None
        self.steps_logged = 0
        self.report: ReportResult | None = None
        # What was (or, on a rank that does not report, would have been) reported; None before.
        self.outcome: RunOutcome | None = None
        for name, seconds in (("heartbeat_seconds", heartbeat_seconds),
                              ("report_patience_seconds", report_patience_seconds),
                              ("recommend_patience_seconds", recommend_patience_seconds)):
            if not seconds >= 0:
                raise ValueError(f"{name} must be >= 0, not {seconds!r}")
        self.heartbeat_seconds = float(heartbeat_seconds)
        self.report_patience_seconds = float(report_patience_seconds)
        self.recommend_patience_seconds = float(recommend_patience_seconds)
        self.fallback = (convert.coerce(fallback, Hyperparameters, "fallback")
                         if fallback is not None else None)
        # What a report would refuse fails here, before any training, not at its end.
        raise_if(run_id_violations(self.run_id) + metadata_violations(self.metadata)
                 + self._violations(self.hyperparameters, "hyperparameters")
                 + self._violations(self.fallback, "fallback"))
        # The run stored under run_id already, whose values an explore requeued after its report
        # trains with (see _recommendation).
        self.stored_run: Run | None = None
        self.unsent_dir = unsent_dir
        self.unsent_path: Path | None = None  # where the report was saved, if it could not be sent
        # The trial's state as the last heartbeat found it (None: none answered yet).
        self.trial_state: TrialState | None = None
        self._next_heartbeat: float | None = None  # time.monotonic() when due; None: never
        self._heartbeat_warned = False
        self._client = client
        self._owns_client = client is None
        self._server, self._api_key = server, api_key

    def _violations(self, hp: Hyperparameters | None, field: str) -> list[tuple[str, str]]:
        return hyperparameter_violations(hp, self.spec, field) if hp is not None else []

    @property
    def reporting(self) -> bool:
        if self._reporting is None:
            group = self.process_group()
            return group is None or group.rank == 0
        return self._reporting

    @reporting.setter
    def reporting(self, value: bool) -> None:
        self._reporting = value

    def process_group(self) -> ProcessGroup | None:
        """The processes that train this run: the group given, else torch.distributed's."""
        return self.group if self.group is not None else torch_process_group()

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self._server, api_key=self._api_key)
        return self._client

    def start(self, pins: Pins | dict | None = None) -> Hyperparameters:
        """The hyperparameters to train with: the ones given, else a fresh recommendation (pins
        given here are added to the run's). In a distributed job rank 0 fetches it and every
        process gets rank 0's. A failure to fetch is raised, not hidden. An explore trial's
        first heartbeat goes out at once, so the service learns its interval: a job that dies
        before its first step frees its trial 3 intervals later, not at the trial time-out."""
        if pins is not None:
            self.pins = self.pins.model_copy(update={k: v for k, v in
                                                     convert.coerce(pins, Pins).model_dump().items()
                                                     if v is not None})
        if self.hyperparameters is None or pins is not None:
            self._warn_if_ungrouped()
            answer = from_rank_zero(self.process_group(), self._recommendation)
            if isinstance(answer, Run):  # the run was stored already: its values
                self.stored_run = answer
                answer = answer.hyperparameters
            if isinstance(answer, Hyperparameters):  # the stored run's, or the fallback
                self.hyperparameters = answer
                return self.hyperparameters
            self.recommendation = answer
            self.hyperparameters = self.recommendation.hyperparameters
            if self.recommendation.trial_id and self.heartbeat_seconds:
                self._next_heartbeat = time.monotonic()
                self.heartbeat()
        return self.hyperparameters

    def _warn_if_ungrouped(self) -> None:
        """A launcher (torchrun) said the job has several processes, but none of them shares a
        group with the others yet: each would fetch its own recommendation (its own trial, when
        exploring) and report its own run."""
        world_size = os.environ.get("WORLD_SIZE", "1")
        if (self.process_group() is None and self._reporting is None
                and world_size.isdigit() and int(world_size) > 1):
            log.warning("hparamrec: WORLD_SIZE is %s but torch.distributed is not initialized: "
                        "this process fetches its own recommendation and reports its own run; "
                        "initialize the process group before the run starts (or pass group=)",
                        world_size)

    def _recommendation(self) -> Recommendation | Run | Hyperparameters:
        """The recommendation for the run (a job resumed under its run_id gets the same answer
        again); for an explore whose run is stored already (its job requeued after reporting,
        say), the stored run, whose values it trains with, as an exploit run would find its
        report stored; the fallback, if given, when the service stays unreachable."""
        try:
            return self.client.recommend(self.spec, self.pins, mode=self.mode, run_id=self.run_id,
                                         patience=self.recommend_patience_seconds)
        except (UnavailableError, DeadlineExceededError) as error:
            if self.fallback is None:
                raise
            log.warning("hparamrec: no recommendation for run %s after %.0f s (%s): training "
                        "with the fallback %s", self.run_id, self.recommend_patience_seconds,
                        error, convert.as_json(self.fallback, indent=None))
            return self.fallback
        except InvalidArgumentError as error:
            if self.mode is not Mode.EXPLORE or "run_id" not in dict(error.field_violations):
                raise
            try:
                stored = self.client.get_run(self.run_id)
            except NotFoundError:
                raise error from None
        log.warning("hparamrec: run %s was reported already (%s): it trains again with the values "
                    "it ran with, and its report will not be stored; give a new run a new run_id",
                    self.run_id, stored.outcome.status.value)
        return stored

    @property
    def resolved_spec(self) -> TrainingSpec:
        """The run's spec as the service resolved it (every size filled in: the
        recommendation's, or the stored run's); the spec given when the run has neither (its
        own hyperparameters, a fallback), where sizes not given are None."""
        if self.recommendation is not None:
            return self.recommendation.spec
        if self.stored_run is not None:
            return self.stored_run.spec
        return self.spec

    @property
    def seq_len(self) -> int:
        """The tokens per sequence: the spec's, else the service's default."""
        return self.spec.seq_len or self.resolved_spec.seq_len or DEFAULT_SEQ_LEN

    @property
    def trial_id(self) -> str:
        """The explore trial the run evaluates ("" for an exploit run)."""
        return self.recommendation.trial_id if self.recommendation is not None else ""

    def heartbeat(self, force: bool = False) -> HeartbeatResult | None:
        """Tells the service the run of its explore trial is still going, if heartbeat_seconds
        have passed since the last heartbeat (the first goes out with the trial); `force`: now.
        None when nothing was sent or it failed: never raises (a failure is logged once). A
        trial found finished is logged once and sent no more heartbeats."""
        if self._next_heartbeat is None or not self.trial_id or self.reported:
            return None
        now = time.monotonic()
        if (now < self._next_heartbeat and not force) or not self.reporting:
            return None
        self._next_heartbeat = now + self.heartbeat_seconds
        try:
            answer = self.client.heartbeat(self.trial_id, interval_seconds=self.heartbeat_seconds,
                                           timeout=HEARTBEAT_TIMEOUT_SECONDS)
        except UnimplementedError:
            log.warning("hparamrec: the service predates heartbeats: trial %s is kept only "
                        "while the run is shorter than its trial time-out", self.trial_id)
            self._next_heartbeat = None
            return None
        except Exception as error:  # the training run matters more than its trial
            if not self._heartbeat_warned:
                log.warning("hparamrec: could not send the heartbeat of trial %s (%s); training "
                            "goes on, and heartbeats are tried again every %g s",
                            self.trial_id, error, self.heartbeat_seconds)
                self._heartbeat_warned = True
            return None
        self.trial_state = answer.state
        if not answer.running:
            log.warning("hparamrec: trial %s is no longer running (%s: %s); no more heartbeats. "
                        "The run is still reported at its end.", self.trial_id,
                        answer.state.value, answer.detail)
            self._next_heartbeat = None
        return answer

    def at_batch(self, batch: float) -> Hyperparameters:
        """The hyperparameters to train with at `batch` tokens, the batch the trainer can make
        (whole micro-batches) when it is not the recommended one. An exploit recommendation is
        asked for again with the batch pinned, so lr and weight decay are the conditional optimum
        there. An explore trial keeps its values: asking again would hand out a second trial and
        leave this one pending; its report, at the batch used, closes the trial (as the run's own
        configuration when the batch is more than the service's 1% off)."""
        hp = self.hyperparameters
        if (batch == hp.batch_size_tokens or self.pins.batch_size_tokens is not None
                or self.recommendation is None):  # the caller's own values are never replaced
            return hp
        if self.trial_id:
            log.info("hparamrec: trial %s is at batch %g tokens; training at %g with its lr and "
                     "weight decay", self.trial_id, hp.batch_size_tokens, batch)
            return hp
        log.info("hparamrec: recommended batch %g tokens; the trainer makes %g: asking for lr and "
                 "weight decay at that batch", hp.batch_size_tokens, batch)
        return self.start(Pins(batch_size_tokens=batch))

    def use(self, **changes) -> Hyperparameters:
        """Records what the run actually uses (e.g. the batch the trainer could make). A value
        its report would refuse raises InvalidArgumentError, and is not recorded."""
        changed = self._changed(changes)
        raise_if(hyperparameter_violations(changed, self.spec,
                                           only={k for k, v in changes.items() if v is not None}))
        self.hyperparameters = changed
        return self.hyperparameters

    def use_trained(self, **changes) -> Hyperparameters:
        """use() for what a trainer was found to train with (the callbacks, when training
        starts): a value its report would refuse is recorded, with a warning, not raised: the
        training goes on, and its report is saved for send-unsent if the service refuses it."""
        self.hyperparameters = self._changed(changes)
        given = {k for k, v in changes.items() if v is not None}
        missing = {"lr", "batch_size_tokens", "weight_decay"} - given
        if self.reporting:
            for field, problem in hyperparameter_violations(self.hyperparameters, self.spec,
                                                            only=given | missing):
                log.warning("hparamrec: run %s trains with a %s its report cannot carry: %s; "
                            "the service will refuse the report, which is then saved for "
                            "`hparamrec send-unsent`", self.run_id, field, problem)
        return self.hyperparameters

    def _changed(self, changes: dict) -> Hyperparameters:
        base = self.hyperparameters or Hyperparameters()
        return base.model_copy(update={k: v for k, v in changes.items() if v is not None})

    def log(self, loss, step: int | None = None) -> bool:
        """Records a training loss (a float or a one-element tensor) and, if given, the training
        step it was logged at (the final loss averages the last final_loss_window of the steps).
        Returns False once the run has diverged: the first NaN/inf loss reports it as diverged at
        once."""
        if self.reported:
            return not self.diverged
        value = float(loss.detach()) if hasattr(loss, "detach") else float(loss)
        self.steps_logged += 1
        if not math.isfinite(value):
            self.finish(RunOutcome.diverged(self.last_loss))
            return False
        self.last_loss = value
        self.final_losses.add(value, step)
        self.heartbeat()
        return True

    def warn_if_reused(self) -> None:
        """A callback tracks one run: training again with it would train and not be reported
        (its run is reported once), which the caller must hear of."""
        if self.reported:
            log.warning("hparamrec: run %s was already reported; this training will not be: "
                        "use a new callback (and run_id) for each run", self.run_id)

    @property
    def reported(self) -> bool:
        return self.outcome is not None

    @property
    def diverged(self) -> bool:
        return self.outcome is not None and self.outcome.status is RunStatus.DIVERGED

    def finish(self, outcome: RunOutcome | None = None, *,
               last_step: int | None = None) -> ReportResult | None:
        """Reports the run once: with the outcome given, else completed at the final loss (the
        mean of the losses logged over the last final_loss_window of the steps; last_step: the
        run's last step, if later than the last one logged). A "completed" loss over
        MAX_COMPLETED_LOSS nats is a blow-up, reported as diverged. A run that never logged a
        loss is not reported (there is nothing to learn from it; an explore trial's trial is
        freed after 3 missed heartbeats, or handed back to the job resumed under its run_id).
        Never raises: a report that cannot be sent, or that the service refuses, is saved for
        `hparamrec send-unsent` (unsent_path) and logged."""
        if self.reported:
            return self.report
        try:
            return self._finish(outcome, last_step)
        except Exception:  # the training run matters more than its record
            log.exception("hparamrec: could not report run %s; the training is not affected",
                          self.run_id)
            return self._close()

    def _finish(self, outcome: RunOutcome | None, last_step: int | None) -> ReportResult | None:
        how = None
        if outcome is None:
            final = self.final_losses.value(last_step)
            if final is None:
                return self._not_reported("logged no loss, so it has no final loss (a "
                                          "trainer logs it every logging_steps; a custom loop "
                                          "with run.log)")
            loss, how = final
            outcome = RunOutcome.completed(loss)
        elif outcome.final_loss is not None and outcome.final_loss == self.last_loss:
            how = self.final_losses.last_label(finite=outcome.status is RunStatus.DIVERGED)
        if outcome.status is RunStatus.COMPLETED and (outcome.final_loss or 0) > MAX_COMPLETED_LOSS:
            outcome, how = self._blown_up(outcome, how)
        self.outcome = outcome
        self.final_loss_label = how
        if not self.reporting:
            return self._close()
        if self.hyperparameters is None:
            log.warning("hparamrec: run %s has no hyperparameters to report", self.run_id)
            return self._close()
        try:
            rec = self.recommendation
            report = RunReport(
                run_id=self.run_id, spec=self.spec, hyperparameters=self.hyperparameters,
                outcome=outcome, metadata={**self.metadata, "steps_logged": str(self.steps_logged),
                                           **({"final_loss": how} if how else {})},
                recommendation_id=rec.recommendation_id if rec else "",
                trial_id=rec.trial_id if rec else "")
        except Exception as error:  # e.g. metadata changed to non-text after the start
            log.warning("hparamrec: could not report run %s: its report cannot be made (%s); it "
                        "was: spec %r, hyperparameters %r, outcome %r, metadata %r", self.run_id,
                        error, self.spec, self.hyperparameters, outcome, self.metadata)
            return self._close()
        try:
            self.report = self.client.report_run(report, patience=self.report_patience_seconds)
        except Exception as error:  # refused, a key without permission, a bug: it is kept
            self._save_unsent(report, error)
        else:
            for warning in self.report.warnings:
                log.warning("hparamrec: run %s: %s", self.run_id, warning)
            stored = self.report.run.outcome
            # The service names what differs; a service from before it did is told here.
            if not self.report.created and stored != outcome and not self.report.warnings:
                log.warning("hparamrec: run %s was already stored (%s) and is kept as it was: "
                            "this report (%s) was not stored; give each run its own run_id",
                            self.run_id, stored.status.value, outcome.status.value)
        return self._close()

    def _blown_up(self, outcome: RunOutcome, how: str | None) -> tuple[RunOutcome, str]:
        """A final loss over MAX_COMPLETED_LOSS nats per token is no completed run's (the
        service refuses it as one): the run diverged, at its last finite loss."""
        last = self.last_loss if self.last_loss is not None else outcome.final_loss
        label = (f"diverged: the final loss {outcome.final_loss:g}"
                 f"{f' ({how})' if how else ''} is over the {MAX_COMPLETED_LOSS:g} nats of any "
                 f"completed run; {self.final_losses.last_label(finite=True)}: {last:g}")
        log.warning("hparamrec: run %s: %s; reported as diverged", self.run_id, label)
        return RunOutcome.diverged(last), label

    def _save_unsent(self, report: RunReport, error: Exception) -> None:
        """Saves a report that was not stored, for `hparamrec send-unsent`: one the service
        could not be reached for (sent as it is once it is back), or one it refused (fix the
        file, then send it), and logs why."""
        try:
            self.unsent_path = unsent.save(report, self.unsent_dir)
        except OSError as exc:
            log.warning("hparamrec: could not report run %s (%s) nor save the report (%s); the "
                        "report was: %s", self.run_id, error, exc,
                        convert.as_json(report, indent=None))
            return
        send = f"`hparamrec send-unsent {shlex.quote(str(self.unsent_path.parent))}` sends it"
        if isinstance(error, InvalidArgumentError):
            log.warning("hparamrec: the service refused the report of run %s (%s); saved it to "
                        "%s: correct it there, then %s", self.run_id, error, self.unsent_path,
                        send)
        elif isinstance(error, (UnavailableError, DeadlineExceededError, CancelledError)):
            log.warning("hparamrec: could not report run %s for %.0f s (%s); saved the report "
                        "to %s: %s", self.run_id, self.report_patience_seconds, error,
                        self.unsent_path, send)
        elif isinstance(error, HparamrecError):  # a key without permission, say
            log.warning("hparamrec: the service did not take the report of run %s (%s: %s); "
                        "saved it to %s: %s once that is fixed", self.run_id,
                        type(error).__name__, error, self.unsent_path, send)
        else:
            log.warning("hparamrec: could not report run %s (%s: %s); saved the report to %s: "
                        "%s", self.run_id, type(error).__name__, error, self.unsent_path, send)

    def fail(self, error: BaseException | None = None) -> ReportResult | None:
        """Reports the run after an exception: diverged, at its last loss, for a numerical one
        (a FloatingPointError, a message naming NaN, inf or the loss scale); without an error,
        failed. Not reported: a run that never logged a loss (it never trained), and one stopped
        by any other exception (an interruption such as Ctrl-C, a preemption's SystemExit or
        out-of-memory; a bug; a lost node), which the job resumed or requeued under the same
        run_id reports (exploring, with the same trial)."""
        if self.reported:
            return self.report
        if error is not None and _interrupted(error):
            return self._not_reported(f"was interrupted ({type(error).__name__})")
        if self.last_loss is None:
            return self._not_reported("stopped before logging a loss")
        if error is None:
            return self.finish(RunOutcome.failed())
        outcome = outcome_of_exception(error, self.last_loss)
        if outcome is None:
            return self._not_reported(f"stopped on {type(error).__name__}, not a divergence")
        return self.finish(outcome)

    def _not_reported(self, why: str) -> ReportResult | None:
        if self.reporting:
            log.warning("hparamrec: run %s %s; not reported: a job resumed under run_id %s "
                        "reports it%s", self.run_id, why, self.run_id,
                        f" and is handed trial {self.trial_id} again (left alone, the trial is "
                        "given up once its heartbeats stop)" if self.trial_id else "")
        return self._close()

    def _close(self) -> ReportResult | None:
        if self._owns_client and self._client is not None:
            client, self._client = self._client, None
            try:
                client.close()
            except Exception as error:  # nothing of it matters to the training
                log.warning("hparamrec: could not close the client (%s)", error)
        return self.report


@contextmanager
def tracked_run(spec: TrainingSpec | dict, **options) -> Iterator[TrackedRun]:
    """A TrackedRun (same arguments) that fetches its recommendation on entry (unless given
    hyperparameters) and reports on exit: completed with the mean of the losses logged over the
    last final_loss_window of the steps (see FinalLoss); after an exception, diverged if it is
    numerical, else not reported: the job resumed or requeued under the same run_id reports
    the run (see TrackedRun.fail); diverged at once on a NaN/inf loss. The exception itself is
    re-raised."""
    run = TrackedRun(spec, **options)
    try:
        run.start()
    except BaseException:
        run._close()
        raise
    try:
        yield run
    except BaseException as error:
        run.fail(error)
        raise
    run.finish()
