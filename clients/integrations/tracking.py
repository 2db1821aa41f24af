"""One training run, from its recommendation to its report: what the launcher integrations share,
and `tracked_run` for custom training loops.

    with tracked_run({"n_params": "1.3B", "n_tokens": "100B"}) as run:
        hp = run.hyperparameters              # the recommendation, fetched on entry
        ...
        for batch in data:
            loss = step(batch)
            if not run.log(loss):             # NaN/inf: reported as diverged at once
                break
    # on exit: reported as completed with the last loss logged

The run is reported once, with a run_id fixed when the run is created (given, else
$HPARAMREC_RUN_ID, else random), so retries and repeated reports cannot store it twice. A
failure to report is logged with the report's JSON and never raised: the training run matters
more than its record.
"""

import logging
import math
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from clients import convert
from clients.client import Client
from clients.errors import HparamrecError
from clients.models import (Hyperparameters, Mode, Pins, Recommendation, ReportResult, RunOutcome,
                            RunReport, RunStatus, TrainingSpec)

log = logging.getLogger("hparamrec.integrations")

# Exceptions that stop a run for reasons unrelated to its hyperparameters: reported as failed.
_INTERRUPTIONS = (KeyboardInterrupt, SystemExit, MemoryError)


def outcome_of_exception(error: BaseException, last_loss: float | None) -> RunOutcome:
    """Interruptions (Ctrl-C, SystemExit from a scheduler's SIGTERM handler) and out-of-memory
    errors mean the run failed; any other exception during training means it diverged."""
    if isinstance(error, _INTERRUPTIONS) or type(error).__name__ == "OutOfMemoryError":
        return RunOutcome.failed()
    return RunOutcome.diverged(last_loss)


class TrackedRun:
    """A run's hyperparameters and losses, reported once.

    spec: the TrainingSpec (a model, dict or proto message; sizes accept "1.3B").
    hyperparameters: what the run uses; if None, start() fetches a recommendation (with pins)
        and uses it. Change what the trainer actually ended up using with use().
    mode: "exploit" (the best configuration known) or "explore" (the next trial of the spec's
        study: the run then reports against its trial_id, and the sweep refines itself).
    client: a Client to use (not closed here); else one is made from server/api_key (and their
        HPARAMREC_* variables) and closed after the report.
    reporting: False on the ranks of a distributed job that must not report.
    """

    def __init__(self, spec: TrainingSpec | dict, *, hyperparameters: Hyperparameters | dict | None = None,
                 pins: Pins | dict | None = None, client: Client | None = None,
                 server: str | None = None, api_key: str | None = None, run_id: str | None = None,
                 metadata: dict[str, str] | None = None, integration: str = "tracked_run",
                 reporting: bool = True, mode: str = "exploit"):
        self.spec = convert.coerce(spec, TrainingSpec)
        self.pins = convert.coerce(pins, Pins) if pins is not None else Pins()
        self.hyperparameters = (convert.coerce(hyperparameters, Hyperparameters)
                                if hyperparameters is not None else None)
        self.run_id = run_id or os.environ.get("HPARAMREC_RUN_ID") or uuid.uuid4().hex
        self.metadata = {"integration": integration, **(metadata or {})}
        self.reporting = reporting
        self.mode = Mode(mode)  # a typo fails here, before any training
        self.recommendation: Recommendation | None = None
        self.last_loss: float | None = None
        self.steps_logged = 0
        self.report: ReportResult | None = None
        # What was (or, on a rank that does not report, would have been) reported; None before.
        self.outcome: RunOutcome | None = None
        self._client = client
        self._owns_client = client is None
        self._server, self._api_key = server, api_key

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self._server, api_key=self._api_key)
        return self._client

    def start(self, pins: Pins | dict | None = None) -> Hyperparameters:
        """The hyperparameters to train with: the ones given, else a fresh recommendation (pins
        given here are added to the run's). A failure to fetch is raised, not hidden."""
        if pins is not None:
            self.pins = self.pins.model_copy(update={k: v for k, v in
                                                     convert.coerce(pins, Pins).model_dump().items()
                                                     if v is not None})
        if self.hyperparameters is None or pins is not None:
            self.recommendation = self.client.recommend(self.spec, self.pins, mode=self.mode)
            self.hyperparameters = self.recommendation.hyperparameters
        return self.hyperparameters

    def use(self, **changes) -> Hyperparameters:
        """Records what the run actually uses (e.g. the batch the trainer could make)."""
        base = self.hyperparameters or Hyperparameters()
        self.hyperparameters = base.model_copy(update={k: v for k, v in changes.items()
                                                       if v is not None})
        return self.hyperparameters

    def log(self, loss) -> bool:
        """Records a training loss (a float or a one-element tensor). Returns False once the
        run has diverged: the first NaN/inf loss reports it as diverged at once."""
        if self.reported:
            return not self.diverged
        value = float(loss.detach()) if hasattr(loss, "detach") else float(loss)
        self.steps_logged += 1
        if not math.isfinite(value):
            self.finish(RunOutcome.diverged(self.last_loss))
            return False
        self.last_loss = value
        return True

    @property
    def reported(self) -> bool:
        return self.outcome is not None

    @property
    def diverged(self) -> bool:
        return self.outcome is not None and self.outcome.status is RunStatus.DIVERGED

    def finish(self, outcome: RunOutcome | None = None) -> ReportResult | None:
        """Reports the run once: with the outcome given, else completed at the last loss. A run
        that never logged a loss is not reported (there is nothing to learn from it)."""
        if self.reported:
            return self.report
        if outcome is None:
            if self.last_loss is None:
                log.warning("hparamrec: run %s logged no loss; not reported", self.run_id)
                return self._close()
            outcome = RunOutcome.completed(self.last_loss)
        self.outcome = outcome
        if not self.reporting:
            return self._close()
        if self.hyperparameters is None:
            log.warning("hparamrec: run %s has no hyperparameters to report", self.run_id)
            return self._close()
        report = RunReport(
            run_id=self.run_id, spec=self.spec, hyperparameters=self.hyperparameters,
            outcome=outcome, metadata={**self.metadata, "steps_logged": str(self.steps_logged)},
            recommendation_id=self.recommendation.recommendation_id if self.recommendation else "",
            trial_id=self.recommendation.trial_id if self.recommendation else "")
        try:
            self.report = self.client.report_run(report)
        except HparamrecError as error:
            log.warning("hparamrec: could not report run %s (%s); the report was: %s",
                        self.run_id, error, convert.as_json(report, indent=None))
        return self._close()

    def fail(self, error: BaseException | None = None) -> ReportResult | None:
        """Reports the run after an exception: failed for interruptions and out-of-memory,
        diverged otherwise; not at all if it never logged a loss (it never trained)."""
        if self.reported:
            return self.report
        if self.last_loss is None:
            log.warning("hparamrec: run %s stopped before logging a loss; not reported", self.run_id)
            return self._close()
        outcome = (outcome_of_exception(error, self.last_loss) if error is not None
                   else RunOutcome.failed())
        return self.finish(outcome)

    def _close(self) -> ReportResult | None:
        if self._owns_client and self._client is not None:
            self._client.close()
            self._client = None
        return self.report


@contextmanager
def tracked_run(spec: TrainingSpec | dict, **options) -> Iterator[TrackedRun]:
    """A TrackedRun (same arguments) that fetches its recommendation on entry (unless given
    hyperparameters) and reports on exit: completed with the last loss; after an exception,
    diverged (failed for interruptions and out-of-memory); diverged at once on a NaN/inf loss.
    The exception itself is re-raised."""
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
