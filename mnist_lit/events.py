"""A run's TensorBoard event files, read back with TensorBoard's own reader.

The report draws its curves from the scalars every run logs anyway and its test-set views from
the tensors the inspection callback logs after testing (``TEST_TENSORS``), so a run has one
record of what it did, the one TensorBoard shows. A run still training is read as far as it got.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

# what the inspection callback (mnist_lit/callbacks.py) logs after testing, as data
TEST_CONFUSION = "inspect/test_confusion_counts"  # [classes, classes] int: rows true, columns predicted
TEST_WRONG_PIXELS = "inspect/test_misclassified_pixels"  # [N, H, W] int 0..255, most confident first
TEST_WRONG_LABELS = "inspect/test_misclassified_predictions"  # [N, 3] float: predicted, true, confidence

# TensorBoard's names for the curves it should lead with (tensorboard_tag); every other metric keeps
# its own name there
TENSORBOARD_TAGS = {
    "train/acc": "acc/train",
    "val/acc": "acc/val",
    "train/loss_epoch": "loss/train",
    "val/loss": "loss/val",
}

# keep every scalar and tensor; of the pictures one each (they are not read, only skipped over)
SIZES = {"scalars": 0, "tensors": 0, "images": 1, "audio": 1, "histograms": 1, "compressedHistograms": 1}


def tensorboard_tag(name: str) -> str:
    """The TensorBoard tag of a metric: ``acc/train``, ``acc/val``, ``loss/train``, ``loss/val``
    for the four curves people look at first, the others as they are named everywhere else.

    TensorBoard's Scalars tab groups tags by what comes before the first ``/``, sorts the groups
    by name and opens only the first two. Grouped by split, that would be ``test`` (one point per
    chart) and ``train``, with validation closed. So the four curves lead with the metric: the tab
    opens on ``acc`` and ``loss``, each its train and val charts side by side. Then, closed:
    ``per_class``, ``test``, ``train`` (the per-step loss, the learning rate) and ``val``
    (``val/acc_best``). Checkpoints, metrics.json, the CSV and MLflow loggers keep ``val/acc``.
    """
    return TENSORBOARD_TAGS.get(name, name)


class RunEvents:
    """The scalars and tensors under ``RUN/tb`` (nothing, for a run that has no events yet)."""

    def __init__(self, run_dir: Path) -> None:
        self._acc: Any = None
        self._tags: dict[str, list[str]] = {}
        tb = Path(run_dir) / "tb"
        if not any(tb.glob("events.out.tfevents.*")):
            return
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        # a resumed run's events past its checkpoint are dropped, as TensorBoard drops them, without
        # TensorBoard's message per tag
        logging.getLogger("tensorboard").setLevel(logging.ERROR)
        self._acc = EventAccumulator(str(tb), size_guidance=SIZES)
        self._acc.Reload()
        self._tags = self._acc.Tags()

    def scalars(self, name: str) -> list[tuple[int, float]]:
        """(optimizer step, value) of every logged value of the metric ``name`` (``val/acc``),
        under its TensorBoard tag, or under the name itself in runs written before the tags led
        with the metric."""
        logged = self._tags.get("scalars", ())
        tag = next((t for t in (tensorboard_tag(name), name) if t in logged), None)
        if tag is None:
            return []
        return [(e.step, e.value) for e in self._acc.Scalars(tag)]

    def per_epoch(self, name: str) -> list[tuple[int, float]]:
        """(epoch, value), the first epoch 1.

        TensorBoard holds no ``epoch`` scalar (mnist_lit/loggers.py leaves it out), but every
        training epoch ends with one ``train/acc`` value at that epoch's last step: a value's epoch
        is that of the nearest such step, which also holds when validation runs only every few
        epochs and for a resumed run.
        """
        ends = [step for step, _ in self.scalars("train/acc")]
        if not ends:
            return [(i + 1, v) for i, (_, v) in enumerate(self.scalars(name))]
        return [(1 + min(range(len(ends)), key=lambda i: abs(ends[i] - s)), v) for s, v in self.scalars(name)]

    def tensor(self, tag: str) -> Any | None:
        """The last value of a logged tensor, as a numpy array (None when it was never logged)."""
        if tag not in self._tags.get("tensors", ()):
            return None
        from tensorboard.util.tensor_util import make_ndarray

        return make_ndarray(self._acc.Tensors(tag)[-1].tensor_proto)
