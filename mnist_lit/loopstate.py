"""Every read or write of Lightning's loop state (and other private state) in the package, in one place.

Two features need it: several optimizer steps per Lightning training step (``steps_per_call``,
mnist_lit/steps_per_call.py) and the exact mid-epoch resume (the data module restarts an epoch
after the batches already trained, mnist_lit/sampling.py). Both also count batches as Lightning's
``limit_*_batches`` does, with Lightning's own (private) rule. Lightning keeps this state in private
attributes and in the ``loops`` entry of its checkpoints, whose layout may change between
versions; each access here checks that the structure is the one the tests cover and otherwise
stops with an error naming the Lightning version, never silently doing nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning

from mnist_lit.errors import UserError

# the Lightning minor version the test suite covers; pyproject.toml pins lightning to it
TESTED = "2.6"


class LoopStateChanged(RuntimeError):
    """Lightning's loop state is not laid out as this package expects (another Lightning version)."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"mnist_lit uses Lightning's {what}, which lightning {lightning.__version__} does not have "
            f"as expected; the package is tested with lightning {TESTED}.x: "
            f"pip install 'lightning=={TESTED}.*'"
        )


def _attribute(obj: Any, path: str) -> Any:
    for name in path.split("."):
        if not hasattr(obj, name):
            raise LoopStateChanged(f"Trainer.{path} (no {type(obj).__name__}.{name})")
        obj = getattr(obj, name)
    return obj


def batches_done(trainer: Any) -> int:
    """Training steps of the current epoch already completed (after a resume: as restored)."""
    return int(_attribute(trainer, "fit_loop.epoch_loop.batch_progress.current.completed"))


def batch_index(trainer: Any) -> int:
    """The index of the training step under way in its epoch."""
    return int(_attribute(trainer, "fit_loop.epoch_loop.batch_idx"))


def optimizer_step_counter(trainer: Any) -> Callable[[], None]:
    """A function that counts one optimizer step made by the model itself (``trainer.global_step``)."""
    progress = _attribute(trainer, "fit_loop.epoch_loop.manual_optimization.optim_step_progress")

    def count() -> None:
        progress.increment_ready()
        progress.increment_completed()

    return count


def add_logger_steps(trainer: Any, steps: int) -> None:
    """Move the logger's step on by ``steps`` optimizer steps that Lightning did not see."""
    epoch_loop = _attribute(trainer, "fit_loop.epoch_loop")
    if not isinstance(getattr(epoch_loop, "_batches_that_stepped", None), int):
        raise LoopStateChanged("Trainer.fit_loop.epoch_loop._batches_that_stepped")
    epoch_loop._batches_that_stepped += steps


def limited_batches(length: int, limit: int | float | None, stage: str = "train") -> int:
    """How many of ``length`` batches Lightning keeps for ``trainer.limit_{stage}_batches=limit``
    (a float: that fraction, rounded down; Lightning refuses a fraction that keeps none)."""
    if limit is None:
        return length
    try:
        from lightning.pytorch.trainer.connectors.data_connector import _parse_num_batches
        from lightning.pytorch.trainer.states import RunningStage
    except ImportError as err:
        raise LoopStateChanged("data_connector._parse_num_batches (the limit_*_batches rule)") from err
    return int(_parse_num_batches(RunningStage(stage), length, limit))


def carry_over(checkpoint: dict[str, Any], saved: int, now: int) -> None:
    """Rewrite a training checkpoint's ``loops`` entry, saved with ``saved`` batches per training
    step, for a run that resumes with ``now`` (before Lightning restores its loops from it).

    Lightning counts optimizer steps in one of two places (automatic or manual optimization) and
    the position in the epoch in training steps; both are rewritten in this run's terms.
    """
    loop = checkpoint.get("loops", {}).get("fit_loop")
    auto = (loop or {}).get("epoch_loop.automatic_optimization.optim_progress", {})
    auto = auto.get("optimizer", {}).get("step")
    manual = (loop or {}).get("epoch_loop.manual_optimization.optim_step_progress")
    position = (loop or {}).get("epoch_loop.batch_progress")
    if auto is None or manual is None or position is None:
        raise LoopStateChanged("checkpoint entry loops.fit_loop (its optimizer-step and batch progress)")
    steps = max(auto["total"]["completed"], manual["total"]["completed"])
    for progress in (auto, manual):
        for part in ("total", "current"):
            progress[part].update(ready=steps, completed=steps)
    if saved == now or position.get("is_last_batch", True):
        return
    batches = position["current"]["completed"] * saved
    if batches % now:
        raise UserError(
            f"ckpt_path: the checkpoint stopped {batches} batches into an epoch with "
            f"steps_per_call={saved}, which steps_per_call={now} cannot continue "
            f"from; resume with steps_per_call={saved}"
        )
    done = batches // now
    offset = done - position["current"]["completed"]
    for key in position["current"]:
        position["total"][key] += offset
        position["current"][key] = done


def set_average_fn(callback: Any, avg_fn: Callable[..., Any]) -> None:
    """Make a WeightAveraging callback average with ``avg_fn``: it hands its private ``_kwargs`` to
    torch's AveragedModel at setup, and EMAWeightAveraging fixes ``avg_fn`` there."""
    kwargs = getattr(callback, "_kwargs", None)
    if not isinstance(kwargs, dict) or "avg_fn" not in kwargs:
        raise LoopStateChanged(f"{type(callback).__name__}._kwargs['avg_fn'] (the AveragedModel arguments)")
    kwargs["avg_fn"] = avg_fn


def use_averaged_weights(checkpoint: dict[str, Any], fitting: bool) -> None:
    """Outside fit, a weight-averaged checkpoint's weights are its average, whoever loads it.

    Lightning's WeightAveraging (the ``ema:`` switch, or one added under ``callbacks.``) saves the
    average as ``state_dict`` and the trained weights as ``current_model_state``. When the file is
    loaded again while the callback still holds its average (``trainer.test(ckpt_path=best)`` after
    fit), the callback puts ``current_model_state`` into the module, so the test would measure the
    trained weights, not the average that validation chose the checkpoint by. This hook runs
    before the callback's, so pointing ``current_model_state`` at the average keeps the average.
    A resumed fit restores both, as saved.
    """
    if not fitting and "current_model_state" in checkpoint:
        checkpoint["current_model_state"] = checkpoint["state_dict"]
