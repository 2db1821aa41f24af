"""The processes of a distributed job train one run, so they must train it with one set of
hyperparameters: global rank 0 fetches the recommendation and every other process takes rank 0's.
Each process asking for itself would, in explore mode, hand out one trial per process (concurrent
explorers get distinct trials), train the replicas of one model with different learning rates,
and leave all but one trial pending until the time-out; in exploit mode a refit swapped in
between two processes' calls would do the same.
"""

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from clients.errors import HparamrecError

T = TypeVar("T")


@dataclass(frozen=True)
class ProcessGroup:
    """The processes that train one run: this one's global rank, how many there are, and a
    broadcast that returns rank 0's value on every process (every process must call it)."""

    rank: int
    world_size: int
    broadcast: Callable[[Any], Any]


@dataclass(frozen=True)
class _RankZeroFailed:
    message: str


def torch_process_group() -> ProcessGroup | None:
    """torch.distributed's default group, if it is initialized with more than one process (as
    torchrun, transformers' Trainer and accelerate do); else None. torch is not imported here:
    a job that has not imported torch.distributed has not initialized it."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not (dist.is_available() and dist.is_initialized()):
        return None
    if dist.get_world_size() < 2:
        return None

    def broadcast(value):
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    return ProcessGroup(rank=dist.get_rank(), world_size=dist.get_world_size(), broadcast=broadcast)


def from_rank_zero(group: ProcessGroup | None, fetch: Callable[[], T]) -> T:
    """fetch() on rank 0 (or, without a group, here), and its result on every process. An
    error on rank 0 is raised there and, as an HparamrecError, on every other process, which
    would otherwise wait for rank 0's value for ever."""
    if group is None or group.world_size < 2:
        return fetch()
    if group.rank == 0:
        try:
            value = fetch()
        except Exception as error:
            group.broadcast(_RankZeroFailed(f"{type(error).__name__}: {error}"))
            raise
        return group.broadcast(value)
    value = group.broadcast(None)
    if isinstance(value, _RankZeroFailed):
        raise HparamrecError(f"rank 0 could not fetch the run's recommendation ({value.message})")
    return value
