"""``torch.distributed`` set-up from the environment variables that ``torchrun`` sets."""

from __future__ import annotations

import inspect
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistributedContext", "cleanup_distributed", "init_distributed"]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process runs.

    Attributes:
        rank: global rank (0 when not distributed).
        world_size: number of processes (1 when not distributed).
        local_rank: rank on this machine; selects the CUDA device.
        device: this process's device.
        distributed: whether a process group is initialised with more than one process.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    distributed: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and prints."""
        return self.rank == 0


def init_distributed(
    device: str | torch.device | None = None, timeout_s: float = 1800.0
) -> DistributedContext:
    """Initialises the default process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1).

    Backend ``nccl`` on CUDA, ``gloo`` on CPU. On CUDA each process takes ``cuda:LOCAL_RANK``; a single
    process takes the device it is given (``"cuda:1"``) and makes it the current device, so that pinned
    memory, the CUDA random state and any ``"cuda"`` tensor go there too.

    Args:
        device: ``"cuda"``, ``"cpu"`` (or a specific device when not distributed); default CUDA when
            available.
        timeout_s: collective timeout.

    Returns:
        :class:`DistributedContext`.
    """
    device = torch.device(device) if device is not None else None
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: CUDA was requested but torch.cuda.is_available() is False")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        if device.type == "cuda":
            if device.index is None:
                device = torch.device("cuda", torch.cuda.current_device())
            torch.cuda.set_device(device)
        return DistributedContext(device=device)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        from datetime import timedelta

        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            timeout=timedelta(seconds=timeout_s),
            **({"device_id": device} if device.type == "cuda" and _binds_device() else {}),
        )
    return DistributedContext(rank, world_size, local_rank, device, True)


def cleanup_distributed() -> None:
    """Destroys the default process group if there is one.

    On a normal exit every rank first waits for the others, so no rank tears its connections down while
    a peer still uses them (with gloo that can abort the process at exit). While an exception is
    propagating (``cleanup_distributed`` in a ``finally``) there is no such wait: a failed rank leaves
    at once and its peers fail in their next collective.
    """
    if dist.is_available() and dist.is_initialized():
        if sys.exc_info()[0] is None and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def _binds_device() -> bool:
    """Whether ``init_process_group`` takes ``device_id`` (added after torch 2.1, pytorch/pytorch#114916).

    Binding the group to the device forms the NCCL communicator at once and silences the "guessing the
    device" warning of the first barrier; older releases run without it (the device is already current).
    """
    return "device_id" in inspect.signature(dist.init_process_group).parameters
