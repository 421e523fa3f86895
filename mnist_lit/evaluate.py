"""``python -m mnist_lit.evaluate ckpt=PATH``: how good a checkpoint is, and how robust.

Rebuilds the model from the run config saved in the checkpoint (weights only), then measures
on the official test set: accuracy and loss exactly as the run's own test step does, per-class
accuracy, the confusion matrix, and accuracy on test digits shifted by a few pixels in each
direction and rotated by a few degrees either way. Prints tables and writes evaluation.json,
confusion_matrix.png and robustness.png.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig

from mnist_lit.cli import COMMON, model_override, run_command, torch_device, user_errors
from mnist_lit.config import boolean, check_rules, int_list, integer, optional_path, optional_positive_int
from mnist_lit.record import read_metrics, write_json

if TYPE_CHECKING:
    import torch

    from mnist_lit.checkpoint import LoadedModel

log = logging.getLogger(__name__)

RULES = {
    **COMMON,
    "limit": (optional_positive_int, "null or an integer >= 1 (test images)"),
    "skip": (lambda x: integer(x) and 0 <= x < 10_000, "an integer in 0..9999 (test images)"),
    "batch_size": (optional_positive_int, "null or an integer >= 1"),
    "out": (optional_path, "null or a folder path"),
    "robustness.enabled": (boolean, "true or false"),
    "robustness.shifts": (int_list(1, 27), "a list of pixel counts in 1..27, e.g. [1,2,3,4]"),
    "robustness.angles": (int_list(1, 180), "a list of degrees in 1..180, e.g. [5,10,15]"),
}
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def shift(images: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """uint8 [N, H, W] moved dx pixels right and dy down; what moves in is black background."""
    import torch

    out = torch.zeros_like(images)
    h, w = images.shape[-2:]
    out[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = images[
        :, max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out


def rotate(images: torch.Tensor, degrees: float) -> torch.Tensor:
    """uint8 [N, H, W] rotated counter-clockwise about the centre, bilinear, black corners."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    return TF.rotate(images.unsqueeze(1), degrees, InterpolationMode.BILINEAR, fill=0).squeeze(1)


class Evaluator:
    """Runs a loaded model over uint8 test images in fixed batches, the way the run's test step does."""

    def __init__(self, model: LoadedModel, device: torch.device, batch_size: int) -> None:
        self.model = model
        self.device = device
        self.batch_size = batch_size
        model.backbone.to(device)

    def batches(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(logits, labels) of each batch of ``batch_size`` images."""
        logits = self.model.logits(images, self.device, self.batch_size)
        return zip(logits.split(self.batch_size), labels.split(self.batch_size), strict=True)

    def accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        from torchmetrics.classification import MulticlassAccuracy

        acc = MulticlassAccuracy(10, average="micro")
        for logits, y in self.batches(images, labels):
            acc.update(logits, y)
        return float(acc.compute())

    def report(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        """Accuracy, loss, per-class accuracy and confusion matrix, accumulated batch by batch."""
        from torch.nn import functional as F
        from torchmetrics import MeanMetric
        from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

        acc, per_class = MulticlassAccuracy(10, average="micro"), MulticlassAccuracy(10, average="none")
        loss, confusion = MeanMetric(), MulticlassConfusionMatrix(10)
        for logits, y in self.batches(images, labels):
            acc.update(logits, y)
            per_class.update(logits, y)
            confusion.update(logits, y)
            loss.update(F.cross_entropy(logits, y), weight=len(y))
        return {
            "acc": float(acc.compute()),
            "loss": float(loss.compute()),
            "images": len(labels),
            "per_class_acc": {str(d): float(a) for d, a in enumerate(per_class.compute())},
            "per_class_images": {str(d): int((labels == d).sum()) for d in range(10)},
            "confusion_matrix": confusion.compute().tolist(),
        }

    def robustness(
        self, images: torch.Tensor, labels: torch.Tensor, shifts: list[int], angles: list[int]
    ) -> list[dict[str, Any]]:
        """One row per transform: untouched, each shift in each direction, each rotation either way."""
        rows = [{"transform": "none", "amount": 0, "acc": self.accuracy(images, labels)}]
        for direction, (dx, dy) in DIRECTIONS.items():
            for px in shifts:
                moved = shift(images, dx * px, dy * px)
                rows.append(
                    {"transform": f"shift {direction}", "amount": px, "acc": self.accuracy(moved, labels)}
                )
        for deg in sorted({-a for a in angles} | set(angles)):
            rows.append(
                {"transform": "rotate", "amount": deg, "acc": self.accuracy(rotate(images, deg), labels)}
            )
        return rows


def print_tables(result: dict[str, Any]) -> None:
    test, run = result["test"], result.get("run") or {}
    print(f"checkpoint   {result['checkpoint']}")
    print(f"architecture {result['architecture']}")
    first = test.get("first_image", 0)
    print(f"test images  {test['images']}" + (f" (from image {first} on)" if first else ""))
    print(f"test/acc     {test['acc']:.4f}")
    print(f"test/loss    {test['loss']:.4f}")
    if run.get("test/acc") is not None:
        if first:
            same = "skip=0 to compare"
        elif run["test_images"] == test["images"]:
            same = "the same images"
        else:
            same = f"limit={run['test_images']} to compare"
        print(
            f"run's own test/acc {run['test/acc']:.4f} on its first {run['test_images']} test images "
            f"(its metrics.json; {same})"
        )
    print("\nper-class accuracy\n digit  images  accuracy")
    for d, acc in test["per_class_acc"].items():
        print(f"   {d}    {test['per_class_images'][d]:6d}   {acc:.4f}")
    print("\nconfusion matrix (rows true, columns predicted)")
    print("      " + "".join(f"{d:>6}" for d in range(10)))
    for d, row in enumerate(test["confusion_matrix"]):
        print(f"  {d}   " + "".join(f"{v:>6}" for v in row))
    if result.get("robustness"):
        clean = result["robustness"][0]["acc"]
        print("\nrobustness\n transform      amount  accuracy  change")
        for r in result["robustness"]:
            print(f" {r['transform']:<13} {amount(r):>7}  {r['acc']:.4f}   {r['acc'] - clean:+.4f}")


def amount(row: dict[str, Any]) -> str:
    """A robustness row's amount with its unit: ``3 px``, ``-10 deg``, or nothing for the clean row."""
    if row["transform"] == "rotate":
        return f"{row['amount']:+d} deg"
    return f"{row['amount']} px" if row["amount"] else ""


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Everything the command reports, as the dict written to evaluation.json."""
    from mnist_lit import figures
    from mnist_lit.checkpoint import load_for_inference

    device = torch_device(cfg.device, cfg.threads)
    model = load_for_inference(cfg.ckpt, model_override(cfg))
    images, labels = model.test_set(cfg.data.root)
    skip = int(cfg.get("skip") or 0)
    images, labels = images[skip:], labels[skip:]
    if cfg.limit:
        images, labels = images[: cfg.limit], labels[: cfg.limit]
    run_batch = model.config.get("data", {}).get("eval_batch_size", 1000)
    evaluator = Evaluator(model, device, cfg.batch_size or int(run_batch))
    result: dict[str, Any] = {
        "checkpoint": str(model.path),
        "architecture": model.architecture,
        "test": {"first_image": skip, **evaluator.report(images, labels)},
        "run": {"test/acc": run_test_acc(model.run_dir), "test_images": run_test_images(model.config)},
    }
    if cfg.robustness.enabled:
        shifts, angles = list(cfg.robustness.shifts), list(cfg.robustness.angles)
        result["robustness"] = evaluator.robustness(images, labels, shifts, angles)
    out = Path(cfg.out) if cfg.out else model.run_dir / "evaluation"
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "evaluation.json", result)
    title = f"test confusion matrix ({result['test']['images']} digits)"
    figures.save(figures.confusion(result["test"]["confusion_matrix"], title), out / "confusion_matrix.png")
    if result.get("robustness"):
        figures.save(figures.robustness(result["robustness"]), out / "robustness.png")
    result["out"] = str(out)
    return result


def run_test_acc(run_dir: Path) -> float | None:
    """The test/acc the training run itself recorded, if its metrics.json is there."""
    try:
        return float(read_metrics(run_dir)["test/acc"])
    except (ValueError, KeyError, TypeError):
        return None


def run_test_images(config: dict[str, Any], total: int = 10_000) -> int:
    """How many test images the run's own test step saw (its trainer.limit_test_batches)."""
    batch = int(config.get("data", {}).get("eval_batch_size") or 1000)
    batches = -(-total // batch)
    limit = config.get("trainer", {}).get("limit_test_batches")
    if limit is None or isinstance(limit, bool):
        return total
    used = int(batches * limit) if isinstance(limit, float) else min(int(limit), batches)
    return min(total, used * batch)


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    """Check the arguments, evaluate, print the tables and where the files went."""
    with user_errors():
        check_rules(cfg, RULES)
        result = evaluate(cfg)
        print_tables(result)
        print(f"\nwrote {Path(result['out']) / 'evaluation.json'} and the PNGs beside it")


if __name__ == "__main__":
    run_command(main, "evaluate")
