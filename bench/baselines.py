"""The hand-written loops the package is measured against, usable without the bench.

    python bench/baselines.py plain twoconv 64                  # plain in-memory loop, one epoch
    python bench/baselines.py plain twoconv 64 --channels-last --batches 300
    python bench/baselines.py torchvision twoconv 64            # torchvision MNIST + DataLoader
    python bench/baselines.py bare twoconv 64                   # a bare LightningModule

Each prints one line of JSON: images, seconds, images/s and images per CPU-second over the
batches after the first ``WARMUP`` (as mnist_lit.perf.EpochTimer times the package's runs).

Every loop trains the package's own network class with the package's default optimizer and
schedule (Adam, lr 0.002, per-step one-cycle over the epoch) on the package's 55,000 training
images (the same seeded split), on the GPU when there is one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

WARMUP = 20  # batches left out of every throughput, as mnist_lit.perf.EpochTimer does
MEAN, STD = 0.1307, 0.3081
SEED = 42
VAL_SIZE = 5000
GATHER = 8  # the plain in-memory loop gathers and normalises this many batches at once


@dataclass(frozen=True)
class LoopRate:
    """One hand-written loop's training throughput over the batches after the first WARMUP."""

    images: int
    seconds: float
    images_per_s: float
    images_per_cpu_s: float


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def machine_name() -> str:
    """The GPU's name, else the CPU's model name (for the table's heading and the JSON)."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def build(model: str) -> nn.Module:
    """The package's own backbone class for ``model`` (the same network, not a look-alike)."""
    from mnist_lit import models

    names = {"twoconv": "TwoConv", "resnet": "ResNet8", "examplesnet": "ExamplesNet"}
    return getattr(models, names[model])()


def optimizer_for(net: nn.Module, steps: int) -> tuple[torch.optim.Optimizer, Any]:
    """The package's default: Adam lr 0.002 with a per-step one-cycle schedule over the epoch."""
    opt = torch.optim.Adam(net.parameters(), lr=0.002)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=0.002,
        total_steps=steps,
        pct_start=0.25,
        div_factor=25.0,
        final_div_factor=1e4,
        cycle_momentum=False,
    )
    return opt, sched


def train_split(root: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The package's 55,000 training images (uint8) and labels, and their indices in the 60,000."""
    from torchvision.datasets import MNIST

    from mnist_lit.data import split_indices

    ds = MNIST(str(root), train=True, download=False)
    train_idx, _ = split_indices(len(ds.targets), VAL_SIZE, SEED)
    return ds.data[train_idx], ds.targets[train_idx], train_idx


def steps_for(n: int, batch: int, max_batches: int | None) -> int:
    """Batches in one epoch of ``n`` images (the last one partial), at most ``max_batches``."""
    per_epoch = -(-n // batch)
    return per_epoch if max_batches is None else min(max_batches, per_epoch)


def timed_epoch(net: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], steps: int) -> LoopRate:
    """Train over ``batches``; images/s over those after the first WARMUP, ended by a device sync."""
    opt, sched = optimizer_for(net, steps)
    net.train()
    images, t0, cpu0 = 0, None, 0.0
    for i, (x, y) in enumerate(batches):
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if i == WARMUP:
            sync()
            t0, cpu0 = time.perf_counter(), time.process_time()
        elif i > WARMUP:
            images += len(y)
    sync()
    seconds = time.perf_counter() - t0 if t0 is not None else float("nan")
    cpu = time.process_time() - cpu0 if t0 is not None else float("nan")
    return LoopRate(
        images=images,
        seconds=round(seconds, 4),
        images_per_s=round(images / seconds, 1),
        images_per_cpu_s=round(images / cpu, 1),
    )


def plain_in_memory(
    model: str,
    batch: int,
    data: tuple[torch.Tensor, torch.Tensor],
    max_batches: int | None,
    channels_last: bool = False,
) -> LoopRate:
    """A hand-written loop over tensors in memory: shuffle, gather, normalise, step.

    Images are gathered and normalised ``GATHER`` batches at a time, then split into batches: on
    this CPU that runs twoconv at batch 64 10-20% faster than gathering each batch on its own, so
    the loop the package is compared with is the faster of the two (the package's data module
    serves ``steps_per_call`` batches at once the same way).
    ``channels_last``: network and images in NHWC, as the package's ``channels_last=true`` runs.
    """
    torch.manual_seed(SEED)
    dev = device()
    x_all, y_all = data[0].to(dev), data[1].to(dev)
    net = build(model).to(dev)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=layout)
    n = len(y_all)
    steps = steps_for(n, batch, max_batches)

    def batches() -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        perm = torch.randperm(n, device=dev)[: steps * batch]
        for idx in perm.split(GATHER * batch):
            xs = ((x_all[idx].float() / 255.0 - MEAN) / STD).unsqueeze(1)
            for x, y in zip(xs.split(batch), y_all[idx].split(batch), strict=True):
                yield x.contiguous(memory_format=layout), y

    return timed_epoch(net, batches(), steps)


def bare_lightning(
    model: str, batch: int, data: tuple[torch.Tensor, torch.Tensor], max_batches: int | None
) -> LoopRate:
    """The floor under any Lightning package: a LightningModule doing only forward and loss.

    No logger, callbacks, metrics, progress bar or checkpoints; the same batches, optimizer and
    schedule as the plain loop. Its ratio to the plain loop is what Lightning's training loop
    itself costs per step on this machine, whatever a package built on it does.
    """
    import lightning as L

    from mnist_lit.sampling import ResumableLoader

    torch.manual_seed(SEED)
    x_all, y_all = data
    n = len(y_all)
    steps = steps_for(n, batch, max_batches)
    stamps: dict[str, float] = {}

    class Bare(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = build(model)

        def training_step(self, b: tuple[torch.Tensor, torch.Tensor], i: int) -> torch.Tensor:
            if i == WARMUP:
                sync()
                stamps["t0"], stamps["cpu0"] = time.perf_counter(), time.process_time()
            x = ((b[0].float() / 255.0 - MEAN) / STD).unsqueeze(1)
            return F.cross_entropy(self.net(x), b[1])

        def on_train_epoch_end(self) -> None:
            sync()
            stamps["t1"], stamps["cpu1"] = time.perf_counter(), time.process_time()

        def configure_optimizers(self) -> dict[str, Any]:
            opt, sched = optimizer_for(self.net, steps)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=steps,
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Bare(), ResumableLoader(x_all, y_all, batch, False, SEED))
    # the first WARMUP batches are left out; the stamp at WARMUP is taken before that batch runs
    images = min(n, steps * batch) - WARMUP * batch
    seconds = stamps["t1"] - stamps["t0"]
    return LoopRate(
        images=images,
        seconds=round(seconds, 4),
        images_per_s=round(images / seconds, 1),
        images_per_cpu_s=round(images / (stamps["cpu1"] - stamps["cpu0"]), 1),
    )


def plain_torchvision(
    model: str, batch: int, root: Path, train_idx: torch.Tensor, max_batches: int | None
) -> LoopRate:
    """The seed reports' pipeline: torchvision MNIST, per-sample ToTensor + Normalize, a DataLoader."""
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    torch.manual_seed(SEED)
    dev = device()
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])
    ds = Subset(datasets.MNIST(str(root), train=True, download=False, transform=tf), train_idx.tolist())
    loader = DataLoader(ds, batch_size=batch, shuffle=True, pin_memory=dev.type == "cuda")
    net = build(model).to(dev)
    steps = len(loader) if max_batches is None else min(max_batches, len(loader))

    def batches() -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        for i, (x, y) in enumerate(loader):
            if i >= steps:
                return
            yield x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)

    return timed_epoch(net, batches(), steps)


def has_mnist(root: Path) -> bool:
    return (root / "MNIST" / "raw" / "train-images-idx3-ubyte").exists()


def load(root: Path, threads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Set torch's threads and load the training split, as every measurement starts.

    Importing mnist_lit (for the split) imports Lightning, which makes torch ask NVML whether
    CUDA is there at every optimizer step (~40 us each on a machine without a GPU); a hand-written
    script never imports Lightning, and the package lifts it on accelerator=cpu runs as well.
    """
    torch.set_num_threads(threads)
    x, y, train_idx = train_split(root)
    os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
    return x, y, train_idx


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("loop", choices=("plain", "torchvision", "bare"), help="which hand-written loop")
    p.add_argument("model", choices=("twoconv", "resnet", "examplesnet"))
    p.add_argument("batch", type=int)
    p.add_argument("--batches", type=int, default=0, help="timed batches at most (0: the whole epoch)")
    p.add_argument("--channels-last", action="store_true", help="plain: network and images in NHWC")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    p.add_argument(
        "--data-root", type=Path, default=Path(os.environ.get("MNIST_ROOT", "data")), help="MNIST root"
    )
    a = p.parse_args(argv)
    if not has_mnist(a.data_root):
        print(f"error: no MNIST/raw/ under --data-root {a.data_root} (or MNIST_ROOT)", file=sys.stderr)
        return 2
    x, y, train_idx = load(a.data_root, a.threads)
    cap = a.batches or None
    if a.loop == "plain":
        rate = plain_in_memory(a.model, a.batch, (x, y), cap, a.channels_last)
    elif a.loop == "torchvision":
        rate = plain_torchvision(a.model, a.batch, a.data_root, train_idx, cap)
    else:
        rate = bare_lightning(a.model, a.batch, (x, y), cap)
    print(json.dumps(asdict(rate)))  # the last line: the bench reads a bare run from it
    return 0


if __name__ == "__main__":
    sys.exit(main())
