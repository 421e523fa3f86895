"""TensorBoard views of what a network sees and gets wrong, written while it trains and tests.

- once per run: one training batch with its labels;
- every ``every_n_epochs`` validations (and the last): the first conv layer's filters, the
  feature maps of each conv stage for fixed test digits, the validation confusion matrix,
  per-class accuracy scalars and per-class precision-recall curves;
- after testing: the misclassified test digits (most confident mistakes first, titled
  predicted/true confidence), the test confusion matrix, per-class accuracy and PR curves; and,
  as tensors for the report (mnist_lit/events.py), the confusion counts and the misclassified
  digits' pixels, predictions and confidences.

Everything reuses the logits the Classifier computes anyway (its validation and test steps
return them); the extra forward pass is only over a handful of fixed digits.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.nn import functional as F
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from mnist_lit import events, render

TAG = "inspect"
# per-class accuracy scalars: a tag group that sorts after acc/ and loss/ in TensorBoard's Scalars
# tab, which opens only the first two (mnist_lit/events.py tensorboard_tag; mnist_lit/loggers.py
# LAYOUT draws them as one chart per split)
PER_CLASS = "per_class"


def tensorboard_writer(trainer: L.Trainer) -> Any | None:
    """The SummaryWriter of the run's TensorBoard logger, or None when it has none."""
    for logger in trainer.loggers:
        writer = getattr(logger, "experiment", None)
        if hasattr(writer, "add_image"):
            return writer
    return None


def conv_stages(backbone: nn.Module) -> list[tuple[str, nn.Module]]:
    """Top-level children that are, or contain, a Conv2d: the stages whose outputs are shown."""
    return [
        (name, child)
        for name, child in backbone.named_children()
        if isinstance(child, nn.Conv2d) or any(isinstance(m, nn.Conv2d) for m in child.modules())
    ]


def first_conv(backbone: nn.Module) -> nn.Conv2d | None:
    return next((m for m in backbone.modules() if isinstance(m, nn.Conv2d)), None)


class _Split:
    """Confusion matrix, per-class accuracy and probabilities of one validation or test pass."""

    def __init__(self, num_classes: int, device: torch.device) -> None:
        self.confusion = MulticlassConfusionMatrix(num_classes).to(device)
        self.per_class = MulticlassAccuracy(num_classes, average="none").to(device)
        self.probs: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    def update(self, logits: torch.Tensor, labels: torch.Tensor, keep_probs: bool) -> torch.Tensor:
        self.confusion.update(logits, labels)
        self.per_class.update(logits, labels)
        probs = logits.detach().softmax(dim=1)
        if keep_probs:
            self.probs.append(probs.cpu())
            self.labels.append(labels.detach().cpu())
        return probs


class Inspection(Callback):
    """Images and per-class scalars for TensorBoard; see the module docstring for what and when."""

    def __init__(
        self,
        every_n_epochs: int = 1,
        feature_digits: int = 5,
        max_channels: int = 16,
        max_misclassified: int = 64,
        pr_curves: bool = True,
        num_classes: int = 10,
    ) -> None:
        self.every_n_epochs = every_n_epochs
        self.feature_digits = feature_digits
        self.max_channels = max_channels
        self.max_misclassified = max_misclassified
        self.pr_curves = pr_curves
        self.num_classes = num_classes
        self._batch_logged = False
        self._digits: tuple[torch.Tensor, torch.Tensor] | None = None
        self._split: _Split | None = None
        self._wrong: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []

    # ---- helpers -------------------------------------------------------------------------------
    def _due(self, trainer: L.Trainer) -> bool:
        if trainer.sanity_checking:
            return False
        epoch = trainer.current_epoch + 1
        return epoch % self.every_n_epochs == 0 or epoch == trainer.max_epochs

    @staticmethod
    def _backbone(pl_module: L.LightningModule) -> nn.Module:
        return getattr(pl_module, "backbone", pl_module)

    @staticmethod
    def _pixels(trainer: L.Trainer, x: torch.Tensor) -> torch.Tensor:
        """Normalised network inputs [N,1,H,W] back to displayable [N,H,W] in [0, 1]."""
        dm = trainer.datamodule
        x = x.detach().float().cpu()[:, 0]
        if hasattr(dm, "mean") and hasattr(dm, "std"):
            return (x * dm.std + dm.mean).clamp(0, 1)
        return render.rescale(x)

    def _fixed_digits(self, trainer: L.Trainer) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The first test image of each class 0, 1, ..., normalised as the run trains."""
        if self._digits is None:
            dm = trainer.datamodule
            if not (hasattr(dm, "root") and hasattr(dm, "normalize")):
                return None
            from mnist_lit.data import load_mnist

            images, labels = load_mnist(dm.root, train=False, download=False)
            picks = [int((labels == c).nonzero()[0]) for c in range(min(self.feature_digits, 10))]
            self._digits = dm.normalize(images[picks]), labels[picks]
        return self._digits

    # ---- once per run --------------------------------------------------------------------------
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._batch_logged or trainer.global_step > 0:
            return
        self._batch_logged = True
        writer = tensorboard_writer(trainer)
        if writer is None:
            return
        x, y = batch
        n = min(len(y), 100)
        grid = render.titled_grid(self._pixels(trainer, x[:n]), [str(int(v)) for v in y[:n]], ncol=10)
        writer.add_image(f"{TAG}/train_batch", render.headed(grid, "a training batch, labelled"), 0)

    # ---- validation ----------------------------------------------------------------------------
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._split = _Split(self.num_classes, pl_module.device) if self._due(trainer) else None

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._split is not None and isinstance(outputs, torch.Tensor):
            self._split.update(outputs, batch[1], self.pr_curves)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        split, self._split = self._split, None
        writer = tensorboard_writer(trainer)
        if split is None or writer is None:
            return
        step = trainer.global_step
        self._log_split(writer, split, "val", step)
        self._log_filters(writer, pl_module, step)
        self._log_feature_maps(writer, trainer, pl_module, step)

    def _log_split(self, writer: Any, split: _Split, name: str, step: int) -> None:
        if split.confusion.update_count == 0:
            return
        from mnist_lit import figures

        cm = split.confusion.compute()
        title = f"{name} confusion matrix ({int(cm.sum())} digits)"
        writer.add_figure(f"{TAG}/{name}_confusion_matrix", figures.confusion(cm.cpu(), title), step)
        if name == "test":
            writer.add_tensor(events.TEST_CONFUSION, cm.cpu().long(), step)
        for digit, acc in enumerate(split.per_class.compute().tolist()):
            writer.add_scalar(f"{PER_CLASS}/{name}_acc_{digit}", acc, step)
        if split.probs:
            probs, labels = torch.cat(split.probs), torch.cat(split.labels)
            for digit in range(self.num_classes):
                writer.add_pr_curve(f"pr_curve/{name}_{digit}", labels == digit, probs[:, digit], step)

    def _log_filters(self, writer: Any, pl_module: L.LightningModule, step: int) -> None:
        conv = first_conv(self._backbone(pl_module))
        if conv is None:
            return
        w = conv.weight.detach().float().cpu()
        filters = w[:, 0] if w.shape[1] == 1 else w.mean(dim=1)
        grid = render.map_grid(filters, ncol=min(len(filters), 16), cell=56)
        k = "x".join(str(s) for s in w.shape[-2:])
        text = f"first conv layer: {w.shape[0]} filters {k} (each rescaled: white = its largest weight)"
        writer.add_image(f"{TAG}/conv1_filters", render.headed(grid, text), step)

    @torch.no_grad()
    def _log_feature_maps(
        self, writer: Any, trainer: L.Trainer, pl_module: L.LightningModule, step: int
    ) -> None:
        digits = self._fixed_digits(trainer)
        backbone = self._backbone(pl_module)
        stages = conv_stages(backbone)
        if digits is None or not stages:
            return
        captured: dict[str, torch.Tensor] = {}
        hooks = [
            module.register_forward_hook(lambda _m, _i, out, n=name: captured.__setitem__(n, out))
            for name, module in stages
        ]
        was_training = backbone.training
        backbone.eval()
        try:
            backbone(digits[0].to(pl_module.device))
        finally:
            for hook in hooks:
                hook.remove()
            backbone.train(was_training)
        inputs = self._pixels(trainer, digits[0])
        for i, (name, module) in enumerate(stages, start=1):
            out = captured[name].float().cpu()
            c = min(out.shape[1], self.max_channels)
            # one row per digit: the digit itself, then its first c channels, all at one cell size
            cells = torch.cat(
                [F.interpolate(inputs.unsqueeze(1), size=(56, 56)), F.interpolate(out[:, :c], size=(56, 56))],
                dim=1,
            )
            grid = render.map_grid(cells.flatten(0, 1), ncol=c + 1)
            text = (
                f"stage {i} ({type(module).__name__} '{name}'): {c} of {out.shape[1]} channels, "
                f"{out.shape[-2]}x{out.shape[-1]}, digits {digits[1].tolist()}"
            )
            writer.add_image(f"{TAG}/feature_maps/stage{i}", render.headed(grid, text), step)

    # ---- test ----------------------------------------------------------------------------------
    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._split = _Split(self.num_classes, pl_module.device)
        self._wrong = []

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._split is None or not isinstance(outputs, torch.Tensor):
            return
        x, y = batch
        probs = self._split.update(outputs, y, self.pr_curves)
        conf, pred = probs.max(dim=1)
        wrong = pred != y
        if wrong.any() and self.max_misclassified:
            self._wrong.append((x[wrong].cpu(), pred[wrong].cpu(), y[wrong].cpu(), conf[wrong].cpu()))

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        split, self._split = self._split, None
        writer = tensorboard_writer(trainer)
        if split is None or writer is None:
            return
        step = trainer.global_step
        self._log_split(writer, split, "test", step)
        if self._wrong:
            x, pred, true, conf = (torch.cat(parts) for parts in zip(*self._wrong, strict=True))
            order = conf.argsort(descending=True)[: self.max_misclassified]
            pixels = (self._pixels(trainer, x[order]) * 255).round().int()
            labels = torch.stack([pred[order].float(), true[order].float(), conf[order].float()], dim=1)
            grid = render.misclassified_grid(pixels, labels, len(conf))
            writer.add_image(f"{TAG}/test_misclassified", grid, step)
            writer.add_tensor(events.TEST_WRONG_PIXELS, pixels, step)
            writer.add_tensor(events.TEST_WRONG_LABELS, labels, step)
        self._wrong = []


def from_config(cfg: Any) -> list[Callback]:
    """The inspection callback as the ``inspect:`` config block asks (none when disabled)."""
    if cfg is None or not cfg.get("enabled", False):
        return []
    return [
        Inspection(
            every_n_epochs=int(cfg.get("every_n_epochs", 1)),
            feature_digits=int(cfg.get("feature_digits", 5)),
            max_channels=int(cfg.get("max_channels", 16)),
            max_misclassified=int(cfg.get("max_misclassified", 64)),
            pr_curves=bool(cfg.get("pr_curves", True)),
        )
    ]
