"""Python client and CLI of hparamrec. Imports only the generated stubs: no server-side packages,
no torch (the launcher integrations in clients.integrations import their trainer lazily)."""

from clients.aio import AsyncClient
from clients.client import DEFAULT_TARGET, Client
from clients.errors import (CancelledError, DeadlineExceededError, HparamrecError,
                            InvalidArgumentError,
                            NotFoundError, PermissionDeniedError, ResourceExhaustedError,
                            UnauthenticatedError, UnavailableError, UnimplementedError)
from clients.models import (HeartbeatResult, Hyperparameters, Interval, LossPrediction,
                            LossPredictions, Mode, Pins, Recommendation, ReportResult, Run,
                            RunOutcome, RunPage, RunReport, RunStatus, Source, TrainingSpec,
                            TrialState)

__all__ = [
    "DEFAULT_TARGET", "AsyncClient", "Client",
    "CancelledError", "DeadlineExceededError", "HparamrecError", "InvalidArgumentError", "NotFoundError",
    "PermissionDeniedError", "ResourceExhaustedError", "UnauthenticatedError", "UnavailableError",
    "UnimplementedError",
    "HeartbeatResult", "Hyperparameters", "Interval", "LossPrediction", "LossPredictions", "Mode", "Pins",
    "Recommendation", "ReportResult", "Run", "RunOutcome", "RunPage", "RunReport", "RunStatus",
    "Source", "TrainingSpec", "TrialState",
]
