"""Deterministic, resumable batch sampler: the batch of step s depends only on (seed, s, rank)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from benchmark.errors import UserError

_MIX = 1_000_003


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields, for steps [start_step, total_steps), a list of `(index, augmentation_seed)` keys.

    Each epoch is a seeded permutation of the split, sharded over ranks (`perm[rank::world]`); the
    augmentation seed of a sample depends on (seed, epoch, index). Restarting at any step therefore
    reproduces exactly the batches (and augmentations) of an uninterrupted run.
    """

    def __init__(self, num_items: int, batch_size: int, total_steps: int, seed: int,
                 start_step: int = 0, rank: int = 0, world: int = 1) -> None:
        self.steps_per_epoch = num_items // world // batch_size
        if self.steps_per_epoch < 1:
            raise UserError(
                f"the training split has {num_items} images, fewer than one batch of {batch_size} per "
                f"process × {world} processes; lower the batch size or add images."
            )
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.total_steps, self.start_step = total_steps, start_step
        self.rank, self.world = rank, world

    def _shard(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * _MIX + epoch)
        return torch.randperm(self.num_items, generator=generator)[self.rank :: self.world].tolist()

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, shard = -1, []
        for step in range(self.start_step, self.total_steps):
            step_epoch, position = divmod(step, self.steps_per_epoch)
            if step_epoch != epoch:
                epoch, shard = step_epoch, self._shard(step_epoch)
            indices = shard[position * self.batch_size : (position + 1) * self.batch_size]
            yield [(i, ((self.seed * _MIX + epoch) * _MIX + i) % 2**63) for i in indices]

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step)
