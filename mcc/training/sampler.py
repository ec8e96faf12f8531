"""A step-indexed, resumable, distributed batch sampler."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["StepBatchSampler"]


class StepBatchSampler(Sampler[list[int]]):
    """Yields this rank's index batches of one epoch, from any step of it.

    The global order is a pure function of ``(seed, epoch)``: every epoch is a permutation of the
    dataset (``shuffle``) cut into ``steps_per_epoch = len // global_batch`` global batches (the rest is
    dropped, so every step has the same batch). Global batch ``j`` of the epoch is
    ``perm[j * G : (j + 1) * G]``; rank ``r`` gets the contiguous slice ``[r * B, (r + 1) * B)`` of it with
    ``B = G / num_replicas``. Hence a run resumed at step ``s`` sees exactly the batches an uninterrupted
    run sees, and N ranks with batch B see the same samples as one process with batch N * B (in the same
    order: rank-major).

    Args:
        num_samples: dataset length.
        global_batch_size: G, samples per optimiser step over all ranks.
        num_replicas: number of ranks (divides G).
        rank: this rank, in ``[0, num_replicas)``.
        shuffle: permute every epoch (False: dataset order).
        seed: base seed of the permutations.

    Use :meth:`set_epoch` and :meth:`set_start` before iterating:
        >>> sampler = StepBatchSampler(10, 4, seed=0)
        >>> sampler.set_epoch(0); sampler.set_start(1)
        >>> len(list(sampler))      # 2 steps per epoch, starting at the second
        1
    """

    def __init__(
        self,
        num_samples: int,
        global_batch_size: int,
        *,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        if global_batch_size < 1:
            raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(
                f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas} and {rank}"
            )
        if global_batch_size % num_replicas:
            raise ValueError(
                f"global_batch_size {global_batch_size} is not divisible by the {num_replicas} ranks"
            )
        if num_samples < global_batch_size:
            raise ValueError(
                f"the dataset has {num_samples} samples, fewer than one global batch of {global_batch_size}"
            )
        self.num_samples = num_samples
        self.global_batch_size = global_batch_size
        self.batch_size = global_batch_size // num_replicas
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.start = 0

    @property
    def steps_per_epoch(self) -> int:
        return self.num_samples // self.global_batch_size

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch's permutation (and resets the start to its first step)."""
        self.epoch = epoch
        self.start = 0

    def set_start(self, step_in_epoch: int) -> None:
        """Skips the first ``step_in_epoch`` steps of the current epoch (to resume mid-epoch)."""
        if not 0 <= step_in_epoch <= self.steps_per_epoch:
            raise ValueError(f"step_in_epoch must be in [0, {self.steps_per_epoch}], got {step_in_epoch}")
        self.start = step_in_epoch

    def position(self, step: int) -> tuple[int, int]:
        """``(epoch, step_in_epoch)`` of global optimiser step ``step``."""
        return divmod(step, self.steps_per_epoch)

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.num_samples)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.num_samples, generator=generator)

    def __iter__(self) -> Iterator[list[int]]:
        order = self._order()
        for step in range(self.start, self.steps_per_epoch):
            first = step * self.global_batch_size + self.rank * self.batch_size
            yield order[first : first + self.batch_size].tolist()

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start
