"""``steps_per_call=N``: N optimizer steps per Lightning training step, for tiny networks on a CPU.

Lightning's per-batch machinery (hooks, the optimizer closure, loop bookkeeping) costs a network
as small as MNIST's a noticeable share of its step on a CPU. With N > 1 the data module serves N
consecutive batches as one item (``GroupedBatches``, a wrapper of its batch sampler) and
``GroupedClassifier`` makes one optimizer step per batch of it itself. The steps, their order, the
global step, schedules, clipping, the NaN check, the TensorBoard scalars and the checkpoints are
those of one batch per call (tests/test_steps_per_call.py), and so is what callbacks see: the
model calls every callback's ``on_train_batch_start`` and ``on_train_batch_end`` once per batch,
with that batch and its index in the epoch, and Lightning's own once-per-item calls of those two
hooks do nothing (``BatchHooks``).

``train.py`` makes one call here, ``plan``, and builds the run from what it returns.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig

from mnist_lit import loopstate
from mnist_lit.config import resolve_steps_per_call
from mnist_lit.errors import UserError
from mnist_lit.guards import check_finite
from mnist_lit.module import Classifier
from mnist_lit.sampling import EpochBatchSampler

# the per-batch callback hooks the model calls itself once per batch
PER_BATCH = ("on_train_batch_start", "on_train_batch_end")


@dataclass
class Plan:
    """What ``steps`` batches per training step change in a run: Trainer arguments, data module
    arguments, the LightningModule class and its extra arguments, and the callbacks to add."""

    steps: int
    trainer_args: dict[str, Any]
    data_args: dict[str, Any] = field(default_factory=dict)
    model_class: type[Classifier] = Classifier
    model_args: dict[str, Any] = field(default_factory=dict)
    callbacks: list[Callback] = field(default_factory=list)


def plan(cfg: DictConfig, trainer_args: dict[str, Any]) -> Plan:
    """The run's steps per call (``cfg.steps_per_call`` resolved) and what they change."""
    steps = resolve_steps_per_call(cfg)
    record = [StepsPerCallRecord(steps)]
    if steps == 1:
        return Plan(1, trainer_args, callbacks=record)
    args = dict(trainer_args)
    # the model clips and counts batches itself; Lightning sees items of several batches
    clip = args.pop("gradient_clip_val", None)
    algorithm = args.get("gradient_clip_algorithm", "norm")  # stays, for Lightning to check
    limit = args.pop("limit_train_batches", None)  # counted in batches, not items
    if args.get("fast_dev_run"):  # true: one batch, as with one batch per item
        limit = int(args["fast_dev_run"])
    return Plan(
        steps,
        args,
        data_args={"group_batches": functools.partial(GroupedBatches, steps=steps, limit=limit)},
        model_class=GroupedClassifier,
        model_args={
            "steps_per_call": steps,
            "batch_size": int(cfg.data.batch_size),
            "gradient_clip_val": clip,
            "gradient_clip_algorithm": algorithm,
        },
        callbacks=record,
    )


def epoch_batches(trainer: L.Trainer) -> int | float:
    """Training batches in the current epoch, whatever ``steps_per_call`` is (for per-batch callbacks)."""
    grouped = getattr(trainer.train_dataloader, "batches", None)
    return grouped.num_batches if isinstance(grouped, GroupedBatches) else trainer.num_training_batches


class GroupedBatches:
    """Items of ``steps`` consecutive batches of a batch sampler, as one index tensor each.

    The same images in the same order as the sampler alone, cut into the same batches by whoever
    splits an item at the batch size; the last item of an epoch may hold fewer. ``limit`` ends
    every epoch after that many batches (a float: that fraction), as Lightning's
    ``limit_train_batches`` counts them. The sampler's ``done`` here counts items.
    """

    def __init__(self, batches: EpochBatchSampler, steps: int, limit: int | float | None = None) -> None:
        self.inner = batches
        self.steps = steps
        self.num_batches = loopstate.limited_batches(batches.num_batches, limit)
        self.seed = batches.seed

    @property
    def epoch(self) -> int:
        return self.inner.epoch

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def __len__(self) -> int:
        return -(-self.num_batches // self.steps)

    def items_done(self) -> int:
        """Items of this epoch Lightning has completed (none known without a trainer)."""
        return self.inner.done() if self.inner.done is not None else 0

    def batches_done(self) -> int:
        return self.items_done() * self.steps if self.inner.done is not None else self.inner.served

    def __iter__(self) -> Iterator[torch.Tensor]:
        first = self.items_done() * self.steps
        item: list[torch.Tensor] = []
        for batch in self.inner.batches(first, self.num_batches):
            item.append(batch)
            if len(item) == self.steps:
                yield torch.cat(item)
                item = []
        if item:
            yield torch.cat(item)


class BatchHooks:
    """Every callback's per-batch training hooks, for the model to call once per batch.

    Lightning calls them once per item; those calls are made to do nothing (an attribute of the
    callback object hides its method) until ``restore``.
    """

    def __init__(self, callbacks: list[Callback]) -> None:
        self.callbacks = callbacks
        self.calls: dict[str, list[Callable[..., None]]] = {hook: [] for hook in PER_BATCH}
        for callback in callbacks:
            for hook in PER_BATCH:
                if getattr(type(callback), hook) is not getattr(Callback, hook):
                    self.calls[hook].append(getattr(callback, hook))
                    setattr(callback, hook, _nothing)

    def start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, index: int) -> None:
        for hook in self.calls["on_train_batch_start"]:
            hook(trainer, module, batch, index)

    def end(
        self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, index: int
    ) -> None:
        for hook in self.calls["on_train_batch_end"]:
            hook(trainer, module, outputs, batch, index)

    def restore(self) -> None:
        for callback in self.callbacks:
            for hook in PER_BATCH:
                callback.__dict__.pop(hook, None)


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


class GroupedClassifier(Classifier):
    """The Classifier, stepping through an item of ``steps_per_call`` batches in one training step.

    Manual optimization with the torch optimizer itself (no Lightning hooks per step); clipping,
    the NaN check, the per-step schedules, the step-level scalars and the per-batch callbacks are
    applied here once per batch, as Lightning applies them with one batch per call.
    """

    def __init__(
        self,
        *args: Any,
        steps_per_call: int,
        batch_size: int,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str = "norm",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.automatic_optimization = False
        self.steps_per_call = steps_per_call
        self.batch_size = batch_size
        self.gradient_clip_val = gradient_clip_val
        self.gradient_clip_algorithm = gradient_clip_algorithm
        self.hooks: BatchHooks | None = None

    def on_train_start(self) -> None:
        super().on_train_start()
        self.hooks = BatchHooks(self.trainer.callbacks)

    def on_train_end(self) -> None:
        if self.hooks is not None:
            self.hooks.restore()

    def training_step(self, item: tuple[torch.Tensor, torch.Tensor], item_idx: int) -> torch.Tensor:
        """One optimizer step per ``batch_size`` slice of the item; the losses, detached."""
        trainer, hooks = self.trainer, self.hooks
        optimizer = self.optimizers().optimizer  # the torch optimizer: no Lightning hooks per step
        count_step = loopstate.optimizer_step_counter(trainer)
        schedulers = [c.scheduler for c in trainer.lr_scheduler_configs if c.interval == "step"]
        every = trainer.log_every_n_steps
        images, labels = item
        batches = list(zip(images.split(self.batch_size), labels.split(self.batch_size), strict=True))
        losses = []
        for i, (x, y) in enumerate(batches):
            index = item_idx * self.steps_per_call + i  # the batch's index in its epoch
            if i:  # the logger's step, as Lightning moves it on after each batch of one per call
                loopstate.add_logger_steps(trainer, 1)
            hooks.start(trainer, self, (x, y), index)
            logits = self(x)
            loss = self.loss(logits, y)
            check_finite(trainer, loss, self.gradient_clip_val, batch=index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.gradient_clip_val:
                self.clip_gradients(optimizer, self.gradient_clip_val, self.gradient_clip_algorithm)
            step = trainer.global_step
            if (step + 1) % every == 0:  # the scalar one batch per call writes at this step
                self.log_loss(step, loss)
            optimizer.step()
            count_step()  # trainer.global_step counts this step
            for scheduler in schedulers:
                scheduler.step()
            loss = loss.detach()
            self.train_totals.append(loss, logits.detach(), y)
            losses.append(loss)
            hooks.end(trainer, self, {"loss": loss}, (x, y), index)
        return torch.stack(losses)

    def log_loss(self, step: int, loss: torch.Tensor) -> None:
        """train/loss_step at ``step``, as Lightning writes it with one batch per call."""
        loss = loss.detach()
        self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True, logger=False)
        for logger in self.loggers:  # every logger, as self.log would reach them
            logger.log_metrics(
                {"train/loss_step": float(loss), "epoch": float(self.current_epoch)}, step=step
            )

    def on_train_epoch_end(self) -> None:
        for config in self.trainer.lr_scheduler_configs:  # Lightning steps none under manual optimization
            if config.interval == "epoch":
                config.scheduler.step()
        super().on_train_epoch_end()

    def optimizer_steps(self) -> int:
        """The run's optimizer steps: Lightning's estimate counts items, which hold several batches."""
        trainer = self.trainer
        estimate = trainer.estimated_stepping_batches  # in items; also sets up the training data
        grouped = getattr(trainer.train_dataloader, "batches", None)
        if (
            not isinstance(grouped, GroupedBatches)
            or not estimate
            or not trainer.max_epochs
            or trainer.max_epochs < 0
        ):
            raise UserError("steps_per_call > 1 needs mnist_lit's training data and a trainer.max_epochs")
        items = int(trainer.num_training_batches)
        per_epoch = grouped.num_batches if items >= len(grouped) else items * self.steps_per_call
        return per_epoch * trainer.max_epochs


class StepsPerCallRecord(Callback):
    """Records a run's steps per call in its checkpoints, and rewrites the loop state of a
    checkpoint saved with another count before Lightning restores it (mnist_lit/loopstate.py)."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint["steps_per_call"] = self.steps

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if "loops" in checkpoint:  # a training checkpoint
            loopstate.carry_over(checkpoint, checkpoint.get("steps_per_call", 1), self.steps)
