"""Shuffled training batches that a run interrupted mid-epoch picks up exactly where it stopped.

torch's RandomSampler draws each epoch's order from the global RNG, so a resumed run, which
starts a fresh iterator, would see a different order and repeat or skip images. Here epoch
``e``'s order is the ``e``-th permutation drawn from a generator seeded with the run's seed, so
it is known again after a resume, and each epoch's iteration starts after the batches the
training loop has already completed in that epoch (none, except in the epoch a resumed run
continues).

That count is read from the trainer's restored loop progress when the epoch's iteration begins,
not from the loader's own checkpointed state: Lightning restores a loader's state only if it
builds the training loader after loading the checkpoint, which it does not when a per-step
schedule asks for the step count first, and it fetches one batch ahead, so the loader has always
served one batch more than was trained on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset

log = logging.getLogger("mnist_lit")


class EpochBatchSampler(Sampler[torch.Tensor]):
    """Index batches of a seeded per-epoch permutation; Lightning sets the epoch via ``set_epoch``.

    Each batch is a slice of the permutation tensor, not a list of ints: indexing the image tensor
    with it is one gather, without turning 64 Python ints back into a tensor every step.
    ``done`` returns the training steps Lightning has completed in the current epoch: iteration
    starts after them.
    """

    def __init__(
        self, n: int, batch_size: int, drop_last: bool, seed: int, done: Callable[[], int] | None = None
    ) -> None:
        self.n = n
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.seed = seed
        self.done = done
        self.epoch = 0
        self.served = 0  # batches of the current epoch handed out so far
        # a last batch of one image is left out too: batch norm over one value per channel (a
        # BatchNorm1d head, as in SimpleCNN) cannot train on it, and one image is no gradient step
        lone = n % batch_size == 1 and n > 1
        self.num_batches = n // batch_size if drop_last or lone else -(-n // batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def steps_done(self) -> int:
        """Training steps of this epoch completed: Lightning's count, else the batches served."""
        return self.done() if self.done is not None else self.served

    def batches_done(self) -> int:
        return self.steps_done()

    def permutation(self, epoch: int) -> torch.Tensor:
        """Epoch ``epoch``'s order: the same for a given seed, whatever happened before."""
        g = torch.Generator().manual_seed(self.seed)
        for _ in range(epoch):
            torch.randperm(self.n, generator=g)
        return torch.randperm(self.n, generator=g)

    def batches(self, first: int, stop: int) -> Iterator[torch.Tensor]:
        """Batches ``first`` up to ``stop`` of this epoch's order."""
        perm = self.permutation(self.epoch)
        end = min(self.n, stop * self.batch_size)
        for index in range(first, stop):
            self.served = index + 1
            yield perm[index * self.batch_size : min(end, (index + 1) * self.batch_size)]

    def __iter__(self) -> Iterator[torch.Tensor]:
        # the body runs at the first next(): after Lightning's set_epoch and its loop progress reset
        yield from self.batches(self.steps_done(), self.num_batches)


class ResumableLoader(DataLoader):
    """A DataLoader of whole shuffled batches that continues an epoch a resumed run stopped in.

    ``done`` returns how many training steps of the current epoch the training loop has
    completed; ``group``, if given, wraps the batch sampler (several batches per training step:
    mnist_lit/steps_per_call.py). Its ``state_dict`` (saved in every checkpoint) records the
    order's seed and the position, and makes Lightning treat the loader as resumable mid-epoch.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        drop_last: bool,
        seed: int,
        done: Callable[[], int] | None = None,
        group: Callable[[EpochBatchSampler], Any] | None = None,
    ) -> None:
        batches = EpochBatchSampler(len(labels), batch_size, drop_last, seed, done)
        self.batches = group(batches) if group is not None else batches
        # a private generator: creating an iterator draws a base seed from it, which from the global
        # RNG would shift dropout's random numbers between a resumed run and an uninterrupted one
        super().__init__(
            TensorDataset(images, labels),
            sampler=self.batches,
            batch_size=None,
            generator=torch.Generator().manual_seed(seed),
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.batches.epoch,
            "completed": self.batches.batches_done(),
            "seed": self.batches.seed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("seed")
        if saved is not None and int(saved) != self.batches.seed:
            log.warning(
                "the checkpoint's batches were shuffled with seed %s, this run uses %s: the resumed "
                "epoch is drawn in a new order, so some images of it may be seen twice or not at all",
                saved,
                self.batches.seed,
            )
