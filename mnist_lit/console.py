"""What a run prints while it trains: a progress bar that counts batches and a model summary,
both fitting an 80-column terminal.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichModelSummary, RichProgressBar
from lightning.pytorch.utilities.model_summary.model_summary import get_human_readable_count

from mnist_lit.steps_per_call import epoch_batches


class BatchProgressBar(RichProgressBar):
    """Lightning's rich progress bar, counting batches and fitting an 80-column terminal.

    It counts batches (860 in a default epoch, whatever ``steps_per_call`` is), so its rate and
    time left are those of batches. It is redrawn every
    ``refresh_rate`` batches (each redraw reads the shown metrics back from their tensors, which
    for a network as small as MNIST's costs a noticeable share of a step), and shows only the
    training loss and the validation accuracy: every metric stays in TensorBoard and the log.
    """

    SHOWN = {"train/loss_step": "loss", "val/acc": "val/acc"}

    def __init__(self, refresh_rate: int = 20) -> None:
        super().__init__()
        self.every = max(1, refresh_rate)
        self.drawn = 0
        self.total: int | float = 0  # batches in this epoch, known once it starts

    @property
    def total_train_batches(self) -> int | float:
        return epoch_batches(self.trainer)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self.drawn = 0
        self.total = self.total_train_batches

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.total = self.total or self.total_train_batches  # (an epoch resumed midway may not start)
        done = min(batch_idx + 1, self.total)
        if done - self.drawn < self.every and done < self.total:
            return
        self.drawn = done
        if self.train_progress_bar_id is None:  # resumed mid-epoch
            self._initialize_train_progress_bar_id()
        self._update(self.train_progress_bar_id, done)
        self._update_metrics(trainer, pl_module)
        self.refresh()

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        shown = super().get_metrics(trainer, pl_module)
        return {short: shown[name] for name, short in self.SHOWN.items() if name in shown}

    def configure_columns(self, trainer: L.Trainer) -> list[Any]:
        """Description, a short bar, batches done, time left (elapsed once done) and the rate."""
        from rich.progress import TimeRemainingColumn

        description, bar, batches, _, speed = super().configure_columns(trainer)
        bar.bar_width = 14
        return [
            description,
            bar,
            batches,
            TimeRemainingColumn(compact=True, elapsed_when_finished=True),
            speed,
        ]


class ModelTable(RichModelSummary):
    """Lightning's model summary, two levels deep, of the layers a forward pass runs (the metrics,
    which hold no weights and see no images, are left out), with each layer's output size for one
    digit, and the FLOPs of that forward pass (Classifier.example_input_array)."""

    def __init__(self) -> None:
        super().__init__(max_depth=2)

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        from rich import get_console
        from rich.table import Table

        columns = dict(summary_data)
        ran = [i for i, size in enumerate(columns.get("In sizes", [])) if size != "?"]
        rows = ran or range(len(columns["Name"]))
        shown = [name for name in ("Name", "Type", "Params", "Out sizes") if name in columns]
        table = Table(header_style="bold magenta")
        for name in shown:
            table.add_column(name, justify="left" if name in ("Name", "Type") else "right")
        for i in rows:
            table.add_row(*(columns[name][i] for name in shown))
        console = get_console()
        console.print(table)
        count = get_human_readable_count
        frozen = total_parameters - trainable_parameters
        console.print(
            f"{count(int(total_parameters))} parameters"
            + (f" ({count(int(frozen))} frozen)" if frozen else "")
            + f", {model_size:.2f} MB; one digit's forward pass: {count(int(total_flops))} FLOPs"
        )
