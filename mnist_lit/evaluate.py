"""``python -m mnist_lit.evaluate ckpt=PATH``: how good a checkpoint is, and how robust.

Rebuilds the model from the run config saved in the checkpoint (weights only), then measures
on the official test set: accuracy and loss exactly as the run's own test step does, per-class
accuracy, the confusion matrix, and accuracy on test digits shifted by a few pixels in each
direction and rotated by a few degrees either way. Prints tables and writes evaluation.json,
confusion_matrix.png and robustness.png.

With several checkpoints (``ckpt=SWEEP_DIR``, ``ckpt=[A,B]``) each member's test accuracy and
loss come first, and everything else is measured on the ensemble: the mean of the members'
softmax probabilities (mnist_lit/ensemble.py).
"""

from __future__ import annotations

import logging
import statistics
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig, OmegaConf

from mnist_lit.cli import COMMON, model_override, run_command, torch_device, user_errors
from mnist_lit.config import (
    boolean,
    check_rules,
    int_list,
    integer,
    optional_path,
    optional_positive_int,
    positive_int,
)
from mnist_lit.ensemble import (
    FORMS,
    Ensemble,
    ckpt_value,
    draw_subsets,
    load_models,
    quote_ckpt_list,
    subset_groups,
)
from mnist_lit.record import read_metrics, write_json

if TYPE_CHECKING:
    import torch

    from mnist_lit.checkpoint import LoadedModel

log = logging.getLogger(__name__)

RULES = {
    **COMMON,
    "ckpt": (ckpt_value, FORMS),
    "limit": (optional_positive_int, "null or an integer >= 1 (test images)"),
    "skip": (lambda x: integer(x) and 0 <= x < 10_000, "an integer in 0..9999 (test images)"),
    "batch_size": (optional_positive_int, "null or an integer >= 1"),
    "out": (optional_path, "null or a folder path"),
    "robustness.enabled": (boolean, "true or false"),
    "robustness.shifts": (int_list(1, 27), "a list of pixel counts in 1..27, e.g. [1,2,3,4]"),
    "robustness.angles": (int_list(1, 180), "a list of degrees in 1..180, e.g. [5,10,15]"),
    "subsets.size": (
        lambda x: (
            x is None
            or (integer(x) and x >= 1)
            or (isinstance(x, list) and bool(x) and all(integer(v) and v >= 0 for v in x))
        ),
        "null, a member count >= 1, or a list of counts >= 0, one per item of ckpt=[...]",
    ),
    "subsets.max": (positive_int, "an integer >= 1 (ensembles scored at most)"),
}
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
# an ensemble whose members come from different folders: its files go under ./outputs
ENSEMBLES = Path("outputs") / "ensembles"


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
    """Runs a loaded model over uint8 test images in fixed batches, the way the run's test step does.

    The model is one checkpoint (LoadedModel) or an Ensemble, whose logits are the log of its
    members' mean probabilities: the same measures then score the ensemble.
    """

    def __init__(self, model: LoadedModel | Ensemble, device: torch.device, batch_size: int) -> None:
        self.model = model
        self.device = device
        self.batch_size = batch_size
        model.to(device)

    def batches(
        self, images: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(logits, labels) of each batch of ``batch_size`` images; ``logits`` when already computed."""
        if logits is None:
            logits = self.model.logits(images, self.device, self.batch_size)
        return zip(logits.split(self.batch_size), labels.split(self.batch_size), strict=True)

    def accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        from torchmetrics.classification import MulticlassAccuracy

        acc = MulticlassAccuracy(10, average="micro")
        for logits, y in self.batches(images, labels):
            acc.update(logits, y)
        return float(acc.compute())

    def report(
        self, images: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor | None = None
    ) -> dict[str, Any]:
        """Accuracy, loss, per-class accuracy and confusion matrix, accumulated batch by batch
        (from ``logits`` of these images when given, so an ensemble's members run once)."""
        from torch.nn import functional as F
        from torchmetrics import MeanMetric
        from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

        acc, per_class = MulticlassAccuracy(10, average="micro"), MulticlassAccuracy(10, average="none")
        loss, confusion = MeanMetric(), MulticlassConfusionMatrix(10)
        for z, y in self.batches(images, labels, logits):
            acc.update(z, y)
            per_class.update(z, y)
            confusion.update(z, y)
            loss.update(F.cross_entropy(z, y), weight=len(y))
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
    """The tables of evaluation.json: for an ensemble a row per member first, then its own."""
    test, run = result["test"], result.get("run") or {}
    first = test.get("first_image", 0)
    images = f"test images  {test['images']}" + (f" (from image {first} on)" if first else "")
    of = ""
    if result.get("members"):
        print_members(result, images)
        of = " of the ensemble"
    else:
        print(f"checkpoint   {result['checkpoint']}")
        print(f"architecture {result['architecture']}")
        print(images)
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
    print(f"\nper-class accuracy{of}\n digit  images  accuracy")
    for d, acc in test["per_class_acc"].items():
        print(f"   {d}    {test['per_class_images'][d]:6d}   {acc:.4f}")
    print(f"\nconfusion matrix{of} (rows true, columns predicted)")
    print("      " + "".join(f"{d:>6}" for d in range(10)))
    for d, row in enumerate(test["confusion_matrix"]):
        print(f"  {d}   " + "".join(f"{v:>6}" for v in row))
    if result.get("subsets"):
        print_subsets(result["subsets"], test["images"])
    if result.get("robustness"):
        clean = result["robustness"][0]["acc"]
        print(f"\nrobustness{of}\n transform      amount  accuracy  change")
        for r in result["robustness"]:
            print(f" {r['transform']:<13} {amount(r):>7}  {r['acc']:.4f}   {r['acc'] - clean:+.4f}")


def print_members(result: dict[str, Any], images: str) -> None:
    """A row per member (checkpoint, architecture, test/acc, test/loss) and one for the ensemble."""
    members, ensemble = result["members"], result["ensemble"]
    home = result.get("members_in")
    print(f"ensemble of {ensemble['members']} checkpoints: the mean of their softmax probabilities")
    if home:
        print(f"members in   {home}")
    print(images + "\n")
    names = [member_name(m["checkpoint"], home) for m in members]
    wide = max(len("checkpoint"), *(len(n) for n in names))
    arch = max(len("architecture"), *(len(m["architecture"]) for m in members))
    print(f" {'checkpoint':<{wide}}  {'architecture':<{arch}}  test/acc  test/loss")
    for name, m in zip(names, members, strict=True):
        print(f" {name:<{wide}}  {m['architecture']:<{arch}}  {m['acc']:.4f}    {m['loss']:.4f}")
    print(f" {'ensemble':<{wide}}  {'':<{arch}}  {ensemble['acc']:.4f}    {ensemble['loss']:.4f}")


def member_name(checkpoint: str, home: str | None) -> str:
    """A member's checkpoint path, relative to the folder all members are in when there is one."""
    if home and Path(checkpoint).resolve().is_relative_to(home):
        return str(Path(checkpoint).resolve().relative_to(home))
    return checkpoint


def amount(row: dict[str, Any]) -> str:
    """A robustness row's amount with its unit: ``3 px``, ``-10 deg``, or nothing for the clean row."""
    if row["transform"] == "rotate":
        return f"{row['amount']:+d} deg"
    return f"{row['amount']} px" if row["amount"] else ""


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Everything the command reports, as the dict written to evaluation.json."""
    from mnist_lit import figures

    size = cfg.get("subsets", {}).get("size")
    if OmegaConf.is_config(size):
        size = OmegaConf.to_container(size)
    groups = subset_groups(cfg.ckpt, size) if size is not None else None
    model = load_models(cfg.ckpt, model_override(cfg))
    device = torch_device(cfg.device, cfg.threads)
    images, labels = model.test_set(cfg.data.root)
    skip = int(cfg.get("skip") or 0)
    images, labels = images[skip:], labels[skip:]
    if cfg.limit:
        images, labels = images[: cfg.limit], labels[: cfg.limit]
    run_batch = model.config.get("data", {}).get("eval_batch_size", 1000)
    evaluator = Evaluator(model, device, cfg.batch_size or int(run_batch))
    if isinstance(model, Ensemble):
        logits = model.member_logits(images, evaluator.device, evaluator.batch_size)
        result = score_ensemble(model, evaluator, images, labels, logits)
        result["test"] = {"first_image": skip, **result["test"]}
        if groups is not None:
            sizes = [size] if isinstance(size, int) else list(size)
            result["subsets"] = score_subsets(logits, labels, groups, sizes, int(cfg.subsets.max))
    else:
        result = {
            "checkpoint": str(model.path),
            "architecture": model.architecture,
            "test": {"first_image": skip, **evaluator.report(images, labels)},
            "run": {"test/acc": run_test_acc(model.run_dir), "test_images": run_test_images(model.config)},
        }
    if cfg.robustness.enabled:
        shifts, angles = list(cfg.robustness.shifts), list(cfg.robustness.angles)
        result["robustness"] = evaluator.robustness(images, labels, shifts, angles)
    out = output_folder(cfg.out, model)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "evaluation.json", result)
    title = f"test confusion matrix ({result['test']['images']} digits)"
    if isinstance(model, Ensemble):
        title = f"ensemble of {len(model.members)}: {title}"
    figures.save(figures.confusion(result["test"]["confusion_matrix"], title), out / "confusion_matrix.png")
    if result.get("robustness"):
        figures.save(figures.robustness(result["robustness"]), out / "robustness.png")
    else:  # the folder holds one evaluation: no figure left from an earlier one beside this json
        (out / "robustness.png").unlink(missing_ok=True)
    result["out"] = str(out)
    return result


def score_ensemble(
    ensemble: Ensemble,
    evaluator: Evaluator,
    images: torch.Tensor,
    labels: torch.Tensor,
    logits: list[torch.Tensor],
) -> dict[str, Any]:
    """Each member's test/acc and test/loss, scored as its own checkpoint would be, and the
    ensemble's full report (``evaluator``'s), all from each member's ``logits`` of these images:
    each member runs once."""
    members = []
    for member, z in zip(ensemble.members, logits, strict=True):
        own = Evaluator(member, evaluator.device, evaluator.batch_size).report(images, labels, z)
        members.append(
            {"checkpoint": str(member.path), "architecture": member.architecture, "acc": own["acc"],
             "loss": own["loss"]}
        )  # fmt: skip
    test = evaluator.report(images, labels, Ensemble.combine(logits))
    result: dict[str, Any] = {
        "checkpoint": [m["checkpoint"] for m in members],
        "architecture": ensemble.architecture,
        "members": members,
        "ensemble": {"acc": test["acc"], "loss": test["loss"], "members": len(members)},
        "test": test,
    }
    if ensemble.home is not None:
        result["members_in"] = str(ensemble.home)
    return result


def score_subsets(
    logits: list[torch.Tensor], labels: torch.Tensor, groups: list[list[int]], sizes: list[int], limit: int
) -> dict[str, Any]:
    """How much an ensemble's score owes to which members were drawn: the test accuracy of every
    smaller ensemble of ``sizes[i]`` members from each of ``groups`` (at most ``limit`` of them,
    drawn at random beyond that), from the members' logits already computed, as a count of
    ensembles per number of mistakes."""
    from torch.nn import functional as F

    ways, total = draw_subsets(groups, sizes, limit)
    mistakes: Counter[int] = Counter()
    accs, losses = [], []
    for way in ways:
        z = Ensemble.combine([logits[i] for i in way])
        wrong = int((z.argmax(dim=1) != labels).sum())
        mistakes[wrong] += 1
        accs.append(1 - wrong / len(labels))
        losses.append(float(F.cross_entropy(z, labels)))
    return {
        "size": sizes[0] if len(groups) == 1 else sizes,
        "group_members": [len(g) for g in groups],
        "count": len(ways),
        "of": total,
        "acc_mean": statistics.mean(accs),
        "acc_std": statistics.pstdev(accs),
        "acc_min": min(accs),
        "acc_max": max(accs),
        "loss_mean": statistics.mean(losses),
        "mistakes": {str(n): mistakes[n] for n in sorted(mistakes)},
    }


def print_subsets(sub: dict[str, Any], images: int) -> None:
    """One row per number of mistakes: how many of the smaller ensembles made it, and the share of
    them that did at least that well."""
    sizes = [sub["size"]] if isinstance(sub["size"], int) else sub["size"]
    parts = [f"{k} of {n}" for k, n in zip(sizes, sub["group_members"], strict=True)]
    which = f"all {sub['count']:,}"
    if sub["count"] < sub["of"]:
        which = f"{sub['count']:,} drawn at random of {sub['of']:,}"
    print(f"\nensembles of {' + '.join(parts)} members: {which}")
    print(" mistakes  test/acc  ensembles  at least this good")
    done = 0
    for n, count in sub["mistakes"].items():
        done += count
        print(f" {int(n):8d}  {1 - int(n) / images:.4f}  {count:9d}  {done / sub['count']:17.1%}")
    print(
        f" test/acc mean {sub['acc_mean']:.4f} +- {sub['acc_std']:.4f} (min {sub['acc_min']:.4f}, "
        f"max {sub['acc_max']:.4f}); test/loss mean {sub['loss_mean']:.4f}"
    )


def output_folder(out: str | None, model: LoadedModel | Ensemble) -> Path:
    """``out``, else beside what was evaluated: the run's evaluation/, the sweep's evaluation/
    for an ensemble of its jobs, or outputs/ensembles/DATE/TIME for members from anywhere."""
    if out:
        return Path(out)
    if not isinstance(model, Ensemble):
        return model.run_dir / "evaluation"
    if model.home is not None:
        return model.home / "evaluation"
    now = datetime.now()
    return ENSEMBLES / now.strftime("%Y-%m-%d") / now.strftime("%H-%M-%S-%f")


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
    sys.argv[1:] = quote_ckpt_list(sys.argv[1:])
    run_command(main, "evaluate")
