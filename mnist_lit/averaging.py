"""``ema:``: an exponential moving average of the weights, which validation, checkpoints and the test use.

Lightning's ``EMAWeightAveraging`` keeps the average in a copy of the module (an ``AveragedModel``,
parameters and buffers, so BatchNorm's running statistics are averaged with the weights they
belong to). It swaps the average in for every validation, writes it as each checkpoint's
``state_dict`` (the trained weights go to ``current_model_state``, the average's count to
``averaging_state``), restores both on resume, and leaves the average in the module when fit ends.
So ``evaluate``, ``predict`` and ``export``, which read ``state_dict``, use the average as they are;
the end-of-fit test does too (``mnist_lit.loopstate.use_averaged_weights``).

An average of the running statistics is not the statistics of the averaged weights, though: each
step's statistics belong to that step's weights. ``ema.bn_images`` measures them again for the
average on clean training images (``torch.optim.swa_utils.update_bn``, the last step of stochastic
weight averaging) wherever the average is used. The average itself is left as it is, so when that
happens (an interruption's checkpoint, say) changes nothing that comes after.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging
from omegaconf import OmegaConf
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim.swa_utils import update_bn

from mnist_lit import loopstate
from mnist_lit.building import build


def warmed_up_ema(decay: float) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """EMA whose decay grows to ``decay`` as ``min(decay, (1 + n) / (10 + n))`` after n updates
    (TensorFlow's ``ExponentialMovingAverage`` with ``num_updates``).

    A plain EMA at 0.999 is still 42% the initial network after a default epoch of 860 steps:
    a mix of random and trained weights that validates near chance. Warmed up, the average follows
    the weights closely at first and remembers more as training settles. Tensor arithmetic only,
    so a GPU never waits for the count.
    """

    @torch.no_grad()
    def update(average: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        n = num_averaged.to(device=average.device, dtype=torch.float32)
        d = torch.clamp((1 + n) / (10 + n), max=decay)
        return d * average + (1 - d) * current

    return update


# the checkpoint key of the average's own BatchNorm statistics, when the state_dict holds recalibrated ones
OWN_STATISTICS = "averaged_bn_statistics"


class ExponentialAverage(EMAWeightAveraging):
    """Lightning's EMA of the weights, warmed up (``warmed_up_ema``, unless ``warmup=False``), whose
    average is the trained weights until it starts.

    Lightning's average is the copy of the initial weights it made at setup until its first update
    (``update_starting_at_step``); without this, the validations, checkpoints and the final model
    before then would be the untrained network. At each place the average is read (validation,
    checkpoint, end of fit) an average not yet started takes the trained weights, uncounted, so the
    first update still starts the average from the weights of its step.
    """

    def __init__(self, decay: float = 0.999, warmup: bool = True, bn_images: int = 0, **kwargs: Any) -> None:
        super().__init__(decay=decay, **kwargs)
        if warmup:
            loopstate.set_average_fn(self, warmed_up_ema(decay))
        self.bn_images = bn_images
        # the recalibrated statistics of the average at one optimizer step: (step, name -> tensor)
        self._bn_stats: tuple[int, dict[str, torch.Tensor]] | None = None
        # the average's own statistics, while validation runs on the recalibrated ones
        self._kept_stats: dict[str, torch.Tensor] | None = None

    def _recalibrated(self, trainer: L.Trainer) -> dict[str, torch.Tensor] | None:
        """BatchNorm's running statistics of the averaged weights, measured on ``bn_images`` clean
        training images; once per optimizer step, the average's own statistics put back after."""
        if self.bn_images <= 0 or self._average_model is None:
            return None
        step = trainer.global_step
        if self._bn_stats is None or self._bn_stats[0] != step:
            module = self._average_model.module
            kept = bn_statistics(module)
            if kept:
                datamodule = trainer.datamodule
                device = next(module.parameters()).device
                images = datamodule.calibration_images(self.bn_images).to(device)
                size = datamodule.eval_batch_size
                # in training mode dropout draws from the generators the run trains with: forked, so
                # that the training goes on as without the measurement
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    update_bn([images[i : i + size] for i in range(0, len(images), size)], module)
            self._bn_stats = (step, bn_statistics(module))
            load_statistics(module, kept)
        return self._bn_stats[1]

    def _follow_until_started(self, pl_module: L.LightningModule) -> None:
        average = self._average_model
        if average is None or int(average.n_averaged) > 0:
            return
        mine = itertools.chain(average.module.parameters(), average.module.buffers())
        theirs = itertools.chain(pl_module.parameters(), pl_module.buffers())
        for kept, trained in zip(mine, theirs, strict=True):
            kept.detach().copy_(trained.detach())

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._follow_until_started(pl_module)
        stats = self._recalibrated(trainer)
        super().on_validation_epoch_start(trainer, pl_module)  # the average into the module
        if stats is not None:
            self._kept_stats = bn_statistics(pl_module)
            load_statistics(pl_module, stats)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._kept_stats is not None:  # so that the swap back leaves the average as it was
            load_statistics(pl_module, self._kept_stats)
            self._kept_stats = None
        super().on_validation_epoch_end(trainer, pl_module)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._follow_until_started(pl_module)
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        stats = self._recalibrated(trainer)
        if stats is not None:  # the file hands on the recalibrated network; a resume takes the average's own
            checkpoint[OWN_STATISTICS] = bn_statistics(self._average_model.module)
            checkpoint["state_dict"].update(stats)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        super().on_load_checkpoint(trainer, pl_module, checkpoint)
        if self._average_model is not None and OWN_STATISTICS in checkpoint:
            load_statistics(self._average_model.module, checkpoint[OWN_STATISTICS])

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._follow_until_started(pl_module)
        stats = self._recalibrated(trainer)
        super().on_train_end(trainer, pl_module)
        if stats is not None:
            load_statistics(pl_module, stats)


def bn_statistics(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the running statistics of every BatchNorm layer, by their state_dict names."""
    return {
        f"{name}.{buffer}" if name else buffer: value.detach().clone()
        for name, layer in module.named_modules()
        if isinstance(layer, _BatchNorm) and layer.track_running_stats
        for buffer, value in layer.named_buffers(recurse=False)
    }


@torch.no_grad()
def load_statistics(module: torch.nn.Module, stats: dict[str, torch.Tensor]) -> None:
    buffers = dict(module.named_buffers())
    for name, value in stats.items():
        buffers[name].copy_(value)


def from_config(cfg: Any) -> list[Callback]:
    """The averaging callback the ``ema:`` block asks for (none when disabled)."""
    if cfg is None or not cfg.get("enabled", False):
        return []
    settings = OmegaConf.to_container(cfg, resolve=True)
    settings.pop("enabled")
    return [build("ema", functools.partial(ExponentialAverage, **settings))]
