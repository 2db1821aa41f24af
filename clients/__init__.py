"""Python client and CLI of hparamrec. Imports only the generated stubs: no server-side packages,
no torch (the launcher integrations in clients.integrations import their trainer lazily).

The names below load on first use (PEP 562), so that the CLI (clients.cli) can set gRPC's log
level before gRPC is imported."""

import importlib

_MODULE_OF = {
    "AsyncClient": "clients.aio",
    **dict.fromkeys(["DEFAULT_TARGET", "Client"], "clients.client"),
    **dict.fromkeys(["CancelledError", "ClientClosedError", "DeadlineExceededError",
                     "HparamrecError", "InvalidArgumentError", "NotFoundError",
                     "PermissionDeniedError", "ResourceExhaustedError", "UnauthenticatedError",
                     "UnavailableError", "UnimplementedError"], "clients.errors"),
    **dict.fromkeys(["HeartbeatResult", "Hyperparameters", "Interval", "LossPrediction",
                     "LossPredictions", "Mode", "Pins", "Recommendation", "ReportResult", "Run",
                     "RunOutcome", "RunPage", "RunReport", "RunStatus", "Source", "TrainingSpec",
                     "TrialState"], "clients.models"),
}
__all__ = list(_MODULE_OF)


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'clients' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
