"""MNIST held in memory as uint8 tensors, served as whole batches, normalised on the device.

torchvision reads (or downloads) the IDX files once; after that no per-sample Python work
happens: a batch is one fancy-index into the uint8 tensor, moved to the training device, then
converted to float and normalised there in a single operation (and, with ``data.augment.enabled``,
randomly rotated, scaled, shifted and erased as a batch: mnist_lit/augment.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    RandomSampler,
    Sampler,
    SequentialSampler,
    TensorDataset,
)

from mnist_lit import integrity, loopstate
from mnist_lit.errors import UserError
from mnist_lit.images import MEAN, STD, normalize
from mnist_lit.sampling import EpochBatchSampler, ResumableLoader

# the four files torchvision's MNIST(root) reads from root/MNIST/raw/
RAW_FILES = tuple(f.name for f in integrity.RAW_FILES)


def split_indices(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded, disjoint (train, val) index split: the same seed always gives the same split.

    ``val_size`` in 1..n-1 is checked with the config (mnist_lit/config.py, before torch loads)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


def ensure_mnist(root: str | Path, download: bool = True, verify: bool = True) -> Path:
    """The four raw files under ``root`` (downloaded there if absent and allowed), or a UserError.

    With ``verify`` (always, for training) they must be the official MNIST, byte for byte
    (mnist_lit/integrity.py); only a caller reading its own IDX files turns that off. Nothing is
    parsed here, so a DataModule's prepare_data costs no second read of the images.
    """
    from torchvision.datasets import MNIST

    root = Path(root).expanduser()

    def present() -> bool:
        return all((integrity.raw_dir(root) / name).exists() for name in RAW_FILES)

    if not present() and download:
        try:
            MNIST(str(root), train=True, download=True)  # fetches all four files
        except Exception:  # no network, or a mirror refused: report the files instead
            pass
    if not present():
        files = ", ".join(RAW_FILES)
        raise UserError(
            f"MNIST not found under data.root={str(root)!r} (looked in {root / 'MNIST' / 'raw'}) "
            f"and it could not be downloaded. Expected the files {files}. "
            "Point data.root=PATH (or the environment variable MNIST_ROOT) at a folder "
            "holding MNIST/raw/ with those files."
        )
    if verify:  # never let torchvision read a damaged file (each file is hashed once per process)
        integrity.check_raw_files(root)
    return root


def load_mnist(
    root: str | Path, train: bool, download: bool = True, verify: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 [N,28,28], labels int64 [N]) via torchvision, or a UserError naming the files."""
    from torchvision.datasets import MNIST

    ds = MNIST(str(ensure_mnist(root, download, verify)), train=train, download=False)
    return ds.data, ds.targets


class OrderedBatches(SequentialSampler):
    """Index batches of ``range(n)`` in order. A SequentialSampler, so that Lightning's
    ``overfit_batches`` keeps it (it replaces any other sampler by one serving single images)."""

    def __init__(self, n: int, batch_size: int, drop_last: bool) -> None:
        super().__init__(range(n))
        self.batches = BatchSampler(SequentialSampler(range(n)), batch_size, drop_last)

    def __iter__(self) -> Any:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class BatchedTensorLoader(DataLoader):
    """A DataLoader whose sampler yields whole index batches, so each batch is one gather."""

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool, drop_last: bool
    ) -> None:
        dataset = TensorDataset(images, labels)
        if shuffle:
            sampler: Sampler = BatchSampler(RandomSampler(dataset), batch_size, drop_last)
        else:
            sampler = OrderedBatches(len(dataset), batch_size, drop_last)
        super().__init__(dataset, sampler=sampler, batch_size=None)


class MNISTDataModule(L.LightningDataModule):
    """Owns MNIST: the seeded train/validation split of the 60k images and the official 10k test."""

    def __init__(
        self,
        root: str = "data",
        batch_size: int = 64,
        eval_batch_size: int = 1000,
        val_size: int = 5000,
        split_seed: int = 0,
        mean: float = MEAN,
        std: float = STD,
        download: bool = True,
        drop_last: bool = False,
        augment: Mapping[str, Any] | None = None,
        group_batches: Callable[[EpochBatchSampler], Sampler] | None = None,
    ) -> None:
        super().__init__()
        self.root = root
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.val_size = val_size
        self.split_seed = split_seed
        self.mean = mean
        self.std = std
        self.download = download
        self.drop_last = drop_last
        self.augment = dict(augment or {})
        # several batches per training step: a wrapper of the training batch sampler
        # (mnist_lit/steps_per_call.py)
        self.group_batches = group_batches
        self.train_idx: torch.Tensor | None = None
        self.val_idx: torch.Tensor | None = None
        self._train: tuple[torch.Tensor, torch.Tensor] | None = None
        self._test: tuple[torch.Tensor, torch.Tensor] | None = None

    def prepare_data(self) -> None:
        ensure_mnist(self.root, download=self.download)

    def setup(self, stage: str | None = None) -> None:
        if self._train is None and stage in (None, "fit", "validate"):
            self._train = load_mnist(self.root, train=True, download=False)
            self.train_idx, self.val_idx = split_indices(len(self._train[1]), self.val_size, self.split_seed)
            self.train_idx = self.shard(self.train_idx)
        if self._test is None and stage in (None, "test", "predict"):
            self._test = load_mnist(self.root, train=False, download=False)

    def shard(self, indices: torch.Tensor) -> torch.Tensor:
        """Under DDP (trainer.use_distributed_sampler=false) each process trains on its own slice.

        Every process keeps every world_size-th index, all of equal length so their batches line up;
        validation and test stay whole on every process, their metrics synced, so they are exact.
        """
        trainer = getattr(self, "trainer", None)
        world = trainer.world_size if trainer is not None else 1
        if world <= 1:
            return indices
        return indices[trainer.global_rank :: world][: len(indices) // world]

    def train_dataloader(self) -> DataLoader:
        x, y = self._train
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.overfit_batches:  # the same first batches every epoch, in order
            return BatchedTensorLoader(
                x[self.train_idx], y[self.train_idx], self.batch_size, False, self.drop_last
            )
        # seeded per-epoch order (the run's seed): a run resumed mid-epoch continues the same order
        return ResumableLoader(
            x[self.train_idx],
            y[self.train_idx],
            self.batch_size,
            self.drop_last,
            torch.initial_seed(),
            done=self.batches_trained,
            group=self.group_batches,
        )

    def batches_trained(self) -> int:
        """Training steps of the current epoch already completed (after a resume: restored)."""
        trainer = getattr(self, "trainer", None)
        return loopstate.batches_done(trainer) if trainer is not None else 0

    def val_dataloader(self) -> DataLoader:
        x, y = self._train
        return BatchedTensorLoader(x[self.val_idx], y[self.val_idx], self.eval_batch_size, False, False)

    def test_dataloader(self) -> DataLoader:
        x, y = self._test
        return BatchedTensorLoader(x, y, self.eval_batch_size, False, False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N,28,28] -> float [N,1,28,28], with this data module's mean and std."""
        return normalize(images, self.mean, self.std)

    def calibration_images(self, n: int) -> torch.Tensor:
        """The first ``n`` images of the (seeded, shuffled) training split, normalised, never augmented:
        digits as the test shows them, for the BatchNorm statistics of averaged weights (ema.bn_images)."""
        x, _ = self._train
        return self.normalize(x[self.train_idx[:n]])

    def clean_epoch(self) -> bool:
        """One of the last ``augment.clean_last_epochs`` epochs, which train without augmentation
        (none when the run has no last epoch: Lightning's max_epochs -1, training until max_steps)."""
        clean = int(self.augment.get("clean_last_epochs", 0))
        if clean <= 0:
            return False
        last = self.trainer.max_epochs or -1
        return last > 0 and self.trainer.current_epoch >= last - clean

    def on_after_batch_transfer(self, batch: tuple[torch.Tensor, torch.Tensor], dataloader_idx: int):
        if isinstance(batch, torch.Tensor):  # the model's example input (for its summary): an image already
            return batch
        images, labels = batch
        images = self.normalize(images)
        trainer = self.trainer
        if (
            self.augment.get("enabled")
            and trainer is not None
            and trainer.training
            and not self.clean_epoch()
        ):
            from mnist_lit.augment import random_affine, random_erase

            images = random_affine(
                images,
                degrees=float(self.augment.get("degrees", 10.0)),
                translate=float(self.augment.get("translate", 0.1)),
                scale=tuple(self.augment.get("scale", (0.9, 1.1))),
                fill=-self.mean / self.std,
                elastic_alpha=float(self.augment.get("elastic_alpha", 0.0)),
                elastic_sigma=float(self.augment.get("elastic_sigma", 4.0)),
                elastic_p=float(self.augment.get("elastic_p", 1.0)),
            )
            erase_p = float(self.augment.get("erase_p", 0.0))
            if erase_p > 0:
                scale = tuple(self.augment.get("erase_scale", (0.02, 0.33)))
                images = random_erase(images, erase_p, scale=scale, fill=-self.mean / self.std)
        return images, labels
