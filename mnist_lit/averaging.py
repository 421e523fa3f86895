"""``ema:``: an exponential moving average of the weights, which validation, checkpoints and the test use.

Lightning's ``EMAWeightAveraging`` keeps the average in a copy of the module (an ``AveragedModel``,
parameters and buffers, so BatchNorm's running statistics are averaged with the weights they
belong to). It swaps the average in for every validation, writes it as each checkpoint's
``state_dict`` (the trained weights go to ``current_model_state``, the average's count to
``averaging_state``), restores both on resume, and leaves the average in the module when fit ends.
So ``evaluate``, ``predict`` and ``export``, which read ``state_dict``, use the average as they are;
the end-of-fit test does too (``mnist_lit.loopstate.use_averaged_weights``).
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


class ExponentialAverage(EMAWeightAveraging):
    """Lightning's EMA of the weights, warmed up (``warmed_up_ema``, unless ``warmup=False``), whose
    average is the trained weights until it starts.

    Lightning's average is the copy of the initial weights it made at setup until its first update
    (``update_starting_at_step``); without this, the validations, checkpoints and the final model
    before then would be the untrained network. At each place the average is read (validation,
    checkpoint, end of fit) an average not yet started takes the trained weights, uncounted, so the
    first update still starts the average from the weights of its step.
    """

    def __init__(self, decay: float = 0.999, warmup: bool = True, **kwargs: Any) -> None:
        super().__init__(decay=decay, **kwargs)
        if warmup:
            loopstate.set_average_fn(self, warmed_up_ema(decay))

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
        super().on_validation_epoch_start(trainer, pl_module)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._follow_until_started(pl_module)
        super().on_save_checkpoint(trainer, pl_module, checkpoint)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._follow_until_started(pl_module)
        super().on_train_end(trainer, pl_module)


def from_config(cfg: Any) -> list[Callback]:
    """The averaging callback the ``ema:`` block asks for (none when disabled)."""
    if cfg is None or not cfg.get("enabled", False):
        return []
    settings = OmegaConf.to_container(cfg, resolve=True)
    settings.pop("enabled")
    return [build("ema", functools.partial(ExponentialAverage, **settings))]
