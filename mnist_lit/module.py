"""Classifier: the one LightningModule, wrapping whichever backbone the config chose."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn
from torch.nn import functional as F
from torchmetrics import MaxMetric, MeanMetric, Metric
from torchmetrics.classification import MulticlassAccuracy

from mnist_lit import loopstate
from mnist_lit.building import build
from mnist_lit.errors import UserError

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


class TrainTotals(Metric):
    """Summed training loss, correct predictions and images of an epoch, in one tensor.

    A step only appends its loss, logits and targets to lists (a metric update with its
    bookkeeping, or even an argmax, costs a tiny network's step a few percent); the sums are formed
    once per epoch by ``fold``, over all steps at once. Nothing is read back to the host per step,
    so a GPU is never made to wait. The logits kept are 10 numbers per image: 2 MB for an epoch.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("totals", torch.zeros(3, dtype=torch.float64), dist_reduce_fx="sum")
        self._clear()

    def _clear(self) -> None:
        self._losses: list[torch.Tensor] = []
        self._logits: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []

    def append(self, loss: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> None:
        """One training step's contribution, kept aside until ``fold``."""
        self._losses.append(loss)
        self._logits.append(logits)
        self._targets.append(target)

    def update(self, sums: torch.Tensor) -> None:
        self.totals += sums.to(self.totals.dtype)

    def fold(self) -> None:
        """Add the steps appended since the last fold to the summed state."""
        if not self._targets:
            return
        dtype, device = torch.float64, self.totals.device
        sizes = torch.tensor([len(t) for t in self._targets], dtype=dtype, device=device)
        losses = torch.stack(self._losses).to(sizes)
        correct = (torch.cat(self._logits).argmax(dim=1) == torch.cat(self._targets)).sum()
        self.update(torch.stack(((losses * sizes).sum(), correct.to(sizes), sizes.sum())))
        self._clear()

    def compute(self) -> torch.Tensor:
        return self.totals

    def reset(self) -> None:
        super().reset()
        self._clear()


class Classifier(L.LightningModule):
    """Cross-entropy on logits, accuracy per split, the best validation accuracy so far.

    ``optimizer`` and ``scheduler`` are partials (Hydra ``_partial_: true``); a scheduler with
    ``interval="step"`` also receives ``total_steps`` and ``steps_per_epoch`` from the Trainer.
    ``label_smoothing`` applies to the training loss only (``loss``): validation and test losses
    stay plain cross-entropy, comparable between runs with and without it.
    """

    def __init__(
        self,
        backbone: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        interval: str = "epoch",
        num_classes: int = 10,
        config: dict[str, Any] | None = None,
        channels_last: bool = False,
        compile: bool = False,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        # the composed run config travels in every checkpoint, so the model can be rebuilt
        self.save_hyperparameters("config", logger=False)
        # channels_last: NHWC images and conv weights, which GPU convolution kernels prefer
        self.channels_last = channels_last
        self.backbone = backbone.to(memory_format=torch.channels_last) if channels_last else backbone
        if compile:  # in place: parameter names, and so checkpoints, stay those of the plain network
            self.backbone.compile()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.interval = interval
        self.label_smoothing = float(label_smoothing)
        self.train_totals = TrainTotals()
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # a resumed run must remember its best epoch
        # one digit: the model summary shows each layer's output size and FLOPs for it
        self.example_input_array = torch.zeros(1, 1, 28, 28)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.backbone(x)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss, the one place it is formed: every training path (one batch per call,
        or several, mnist_lit/steps_per_call.py) minimises and logs this."""
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self.loss(logits, y)
        # Each self.log call costs about as much as a tiny network's forward pass, so the epoch
        # values accumulate in one metric and self.log runs only on the steps the logger writes
        # (every trainer.log_every_n_steps); the tags stay train/loss_step, train/loss_epoch, train/acc.
        self.train_totals.append(loss.detach(), logits.detach(), y)
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        self.train_totals.fold()
        loss_sum, correct, seen = self.train_totals.compute()  # summed over DDP processes
        # the same value on every DDP process already; sync_dist says so to Lightning (a mean of equals)
        self.log("train/loss_epoch", (loss_sum / seen).float(), prog_bar=True, sync_dist=True)
        self.log("train/acc", (correct / seen).float(), prog_bar=True, sync_dist=True)
        self.train_totals.reset()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        self.val_loss(F.cross_entropy(logits, y), weight=len(y))
        self.val_acc(logits, y)
        self.log("val/loss", self.val_loss, on_epoch=True, prog_bar=True)
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True)
        return logits  # for callbacks that inspect predictions

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True, sync_dist=True)

    def on_train_start(self) -> None:
        # the sanity check must not count as an epoch, nor a resumed run's stale value survive
        self.val_acc.reset()

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        self.test_loss(F.cross_entropy(logits, y), weight=len(y))
        self.test_acc(logits, y)
        self.log("test/loss", self.test_loss, on_epoch=True)
        self.log("test/acc", self.test_acc, on_epoch=True)
        return logits

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build("optim", self.optimizer_factory, list(self.parameters()))
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        if self.interval == "step":
            total = self.optimizer_steps()
            self.check_schedule_length(total)
            per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
            scheduler = build(
                "sched.scheduler",
                self.scheduler_factory,
                optimizer,
                total_steps=total,
                steps_per_epoch=per_epoch,
            )
        else:
            scheduler = build("sched.scheduler", self.scheduler_factory, optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.interval, "name": "train/lr"},
        }

    def optimizer_steps(self) -> int:
        """The run's optimizer steps, for a per-step schedule (also sets up the training data)."""
        return int(self.trainer.estimated_stepping_batches)

    def check_schedule_length(self, total: int) -> None:
        """A per-step schedule restored from a checkpoint only fits a run of the same length."""
        self.schedule_steps = total
        saved = getattr(self, "saved_schedule_steps", None)
        if saved is not None and saved != total:
            raise UserError(
                f"ckpt_path: the checkpoint's per-step schedule was sized for {saved} steps but this run "
                f"has {total}; resume with the original trainer.max_epochs and data.batch_size, "
                "or use an epoch-interval schedule (sched=steplr or sched=constant) to extend a run"
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["schedule_steps"] = getattr(self, "schedule_steps", None)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.saved_schedule_steps = checkpoint.get("schedule_steps")
        fitting = self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING
        loopstate.use_averaged_weights(checkpoint, fitting)
