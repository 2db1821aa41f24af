"""Launcher integrations: a transformers TrainerCallback, a Lightning Callback and `tracked_run`
for custom loops. The trainer libraries are imported only when their callback is first used:
`import clients.integrations` stays as light as the client.

    from clients.integrations import tracked_run
    from clients.integrations import HparamrecCallback            # transformers
    from clients.integrations import HparamrecLightningCallback   # lightning
"""

from clients.integrations.distributed import ProcessGroup
from clients.integrations.tracking import TrackedRun, tracked_run

_LAZY = {
    "HparamrecCallback": "clients.integrations.huggingface",
    "HparamrecLightningCallback": "clients.integrations.lightning",
}

__all__ = ["HparamrecCallback", "HparamrecLightningCallback", "ProcessGroup", "TrackedRun",
           "tracked_run"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
