"""Speed plumbing: an epoch timer for metrics.json, and torch threads that leave busy cores alone.

The timer lets ``bench/bench.py`` (and users) read a run's training throughput from the run
itself, measured the same way the benchmark measures its hand-written loops.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from mnist_lit.rundir import to_run_log
from mnist_lit.steps_per_call import epoch_batches
from mnist_lit.threads import EVERY_S, CoreMeter, available_cores, fair_share

log = logging.getLogger("mnist_lit")


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a timestamp means the work before it is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EpochTimer(Callback):
    """Per training epoch: images and seconds over its batches after the first ``skip`` (warm-up).

    Only training batches count: validation and checkpointing run after the last batch. The GPU
    is synchronised twice per epoch, never per step. ``cpu_seconds`` (the process's CPU time over
    the same span) gives a throughput that other programs sharing the cores disturb far less.
    ``first_step_at`` is the wall-clock time (``time.time()``) at which the first training step
    began, for start-up measurements.
    """

    def __init__(self, skip: int = 20) -> None:
        self.skip = skip
        self.epochs: list[dict[str, float]] = []
        self.first_step_at: float | None = None
        self._t0: float | None = None
        self._cpu0 = 0.0
        self._images = 0
        self._last = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = None
        self._images = 0
        self._last = int(epoch_batches(trainer)) - 1

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.first_step_at is None:
            self.first_step_at = time.time()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        skip = min(self.skip, max(0, self._last - 1))  # a short epoch still times its last step
        if batch_idx > skip:
            self._images += len(batch[1])
        if batch_idx == skip or batch_idx == self._last:
            _sync(pl_module.device)
            now, cpu = time.perf_counter(), time.process_time()
            if batch_idx == skip:
                self._t0, self._cpu0 = now, cpu
            if batch_idx == self._last and self._t0 is not None and self._images:
                self.epochs.append(
                    {"images": self._images, "seconds": now - self._t0, "cpu_seconds": cpu - self._cpu0}
                )

    def summary(self) -> dict[str, Any]:
        """What metrics.json keeps: per-epoch throughput and the first step's wall-clock time."""
        rates = [e["images"] / e["seconds"] for e in self.epochs if e["seconds"] > 0]
        cpu_rates = [e["images"] / e["cpu_seconds"] for e in self.epochs if e["cpu_seconds"] > 0]
        return {
            "first_step_at": self.first_step_at,
            "train_epochs": [{k: round(v, 4) for k, v in e.items()} for e in self.epochs],
            "train_images_per_s": round(rates[-1], 1) if rates else None,
            "train_images_per_cpu_s": round(cpu_rates[-1], 1) if cpu_rates else None,
        }


class FairThreads(Callback):
    """torch's thread count set to the cores other programs leave free (mnist_lit/threads.py):
    counted over the run's start-up, then every EVERY_S seconds of training."""

    def __init__(self) -> None:
        self.meter = CoreMeter()
        self.cores = available_cores()
        self.next_check = 0.0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.adjust(first=True)  # after the data is loaded, before any progress bar is drawn

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if time.monotonic() >= self.next_check:
            self.adjust(first=False)

    def adjust(self, first: bool) -> None:
        self.next_check = time.monotonic() + EVERY_S
        others = self.meter.others()
        if others is None:
            return
        threads = fair_share(self.cores, others)
        if first:
            log.info(
                "torch threads: %d of %d cores (other programs are using about %.1f); "
                "threads=N sets the count",
                threads,
                self.cores,
                others,
            )
        elif threads != torch.get_num_threads():  # the log file only: a console line breaks the bar
            to_run_log(
                logging.INFO,
                "torch threads: %d now (other programs are using about %.1f of %d cores)",
                threads,
                others,
                self.cores,
            )
        torch.set_num_threads(threads)
