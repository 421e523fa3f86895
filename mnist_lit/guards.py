"""Callbacks that keep a run's results trustworthy when something goes wrong during training.

* ``GracefulStop``: Ctrl-C or SIGTERM finishes the current batch, writes a resumable checkpoint
  (``checkpoints/interrupted.ckpt``) and stops; a second Ctrl-C stops at once.
* ``InterruptCheckpoint``: Lightning's OnExceptionCheckpoint, limited to interruptions, so a
  crash or a diverged loss never leaves a checkpoint of broken weights behind.
* ``RngState``: the global RNG states travel in every checkpoint, so dropout (and anything else
  random) continues after a resume exactly as it would have without the interruption.
* ``FiniteLoss``: a NaN or infinite loss stops the run before that step changes the weights.
"""

from __future__ import annotations

import logging
import math
import random
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, OnExceptionCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from mnist_lit import loopstate
from mnist_lit.errors import UserError
from mnist_lit.rundir import (
    CHECKPOINTS,
    INTERRUPTED_CKPT,
    LAST_CKPT,
    RESUMABLE,
    resume_checkpoint,
    training_started,
)

log = logging.getLogger("mnist_lit")


class Diverged(UserError):
    """The training loss stopped being a finite number."""


class GracefulStop(Callback):
    """Turn SIGINT and SIGTERM into Lightning's graceful stop at the next batch boundary.

    Lightning already stops cleanly on SIGTERM: it finishes the batch (and a validation that
    is due), then raises ``SIGTERMException`` where the loop state is consistent for a resume.
    Ctrl-C, by default, raises ``KeyboardInterrupt`` wherever the code happens to be, possibly
    mid optimizer step; here it is routed through the same SIGTERM path. Outside the training
    loop (loading data, testing) a signal stops the run at once: there is nothing to save.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.hard = False
        self.training = False

    @contextmanager
    def handling_signals(self) -> Iterator[GracefulStop]:
        """SIGINT and SIGTERM are handled here inside the block, as before outside it."""
        previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            if signum == signal.SIGINT:  # Ctrl-C again: the user does not want to wait
                self.hard = True
                log.warning("second interrupt: stopping now, without a mid-epoch checkpoint")
                raise KeyboardInterrupt
            return  # the SIGTERM forwarded below, or a repeated SIGTERM: the stop is under way
        self.signum = signum
        if not self.training:
            raise KeyboardInterrupt
        log.warning(
            "%s received: finishing the current batch, then saving a resumable checkpoint "
            "(press Ctrl-C again to stop at once)",
            signal.Signals(signum).name,
        )
        if signum != signal.SIGTERM:
            signal.raise_signal(signal.SIGTERM)  # Lightning's handler sets trainer.received_sigterm

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.training = True
        training_started()  # from here on, a stop keeps what the run has written

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.training = False

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self.training = False

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process stopped by a signal: 128 + its number."""
        return 128 + (self.signum or signal.SIGINT)


class InterruptCheckpoint(OnExceptionCheckpoint):
    """Save ``interrupted.ckpt`` on a graceful stop only; deleted again once a fit completes."""

    def on_exception(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        exception = args[-1] if args else kwargs.get("exception")
        if isinstance(exception, SIGTERMException):
            trainer.save_checkpoint(self.ckpt_path, weights_only=False)  # the whole training state
            log.info("resumable checkpoint written: %s", self.ckpt_path)


class RngState(Callback):
    """Carry the python, torch (and CUDA) RNG states in checkpoints and restore them on resume."""

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        try:
            import numpy as np

            kind, keys, pos, has_gauss, gauss = np.random.get_state()
            state["numpy"] = (kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, gauss)
        except ImportError:
            pass
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        if "numpy" in state:
            import numpy as np

            kind, keys, pos, has_gauss, gauss = state["numpy"]
            np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, gauss))


class FiniteLoss(Callback):
    """Stop at the first NaN or infinite training loss, before backward and the optimizer step.

    The weights (and every checkpoint already written) stay as they were after the last good
    step; the message names the step and what to change.
    """

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor
    ) -> None:
        check_finite(trainer, loss, trainer.gradient_clip_val)


def check_finite(
    trainer: L.Trainer, loss: torch.Tensor, clip: float | None, batch: int | None = None
) -> None:
    """Raise Diverged, naming the step and what to change, unless every value of ``loss`` is finite.

    FiniteLoss calls it before each backward pass; a Classifier that steps several batches per
    call (``steps_per_call``) calls it itself, with the clipping it applies and the batch's index.
    """
    # a scalar loss: one read-back, no extra kernels
    if math.isfinite(loss.item()) if loss.numel() == 1 else bool(torch.isfinite(loss.detach()).all()):
        return
    value = float(loss.detach().float().reshape(-1)[0])
    epoch = trainer.current_epoch
    batch = loopstate.batch_index(trainer) if batch is None else batch
    lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
    clip_hint = (
        f"a smaller trainer.gradient_clip_val (now {clip})"
        if clip
        else "gradient clipping (trainer.gradient_clip_val=1.0)"
    )
    folder = Path(trainer.default_root_dir) / CHECKPOINTS
    raise Diverged(
        f"training loss became {value} at step {trainer.global_step + 1} (epoch {epoch}, batch {batch}); "
        f"the run stopped before applying that step. Lower the learning rate (optim.lr, now {lr:g}) "
        f"or add {clip_hint}. Checkpoints written before this step are intact in {folder}."
    )


def checkpoint_bytes(model: torch.nn.Module, optimizer_slots: int = 2) -> int:
    """A generous size of one checkpoint: float32 weights plus that many optimizer buffers per weight."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return params * (1 + optimizer_slots) + (1 << 20)


def guard_callbacks(out_dir: Path, stop: GracefulStop) -> list[Callback]:
    """The callbacks behind interruption, exact resume and divergence handling, for one run."""
    interrupted = InterruptCheckpoint(out_dir / CHECKPOINTS, Path(INTERRUPTED_CKPT).stem)  # it adds .ckpt
    return [stop, interrupted, RngState(), FiniteLoss()]


def stopped_run(trainer: L.Trainer, stop: GracefulStop, err: BaseException, out_dir: Path) -> dict[str, Any]:
    """What metrics.json says about a run that was interrupted or diverged, and the log line."""
    status = "diverged" if isinstance(err, Diverged) else "interrupted"
    # a diverged run names its epoch-end last.ckpt only
    resume = resume_checkpoint(out_dir, (LAST_CKPT,) if status == "diverged" else RESUMABLE)
    metrics: dict[str, Any] = {
        "status": status,
        "reason": str(err)
        if status == "diverged"
        else f"stopped by {signal.Signals(stop.exit_code - 128).name}",
        "epochs": trainer.current_epoch,
        "global_steps": trainer.global_step,
        "resume_checkpoint": str(resume) if resume else None,
    }
    if "val/acc_best" in trainer.callback_metrics:
        metrics["val/acc_best"] = float(trainer.callback_metrics["val/acc_best"])
    if status == "interrupted" and resume:
        log.warning(
            "run interrupted at epoch %d, step %d (%s); resume with: python -m mnist_lit ckpt_path=%s",
            trainer.current_epoch,
            trainer.global_step,
            out_dir,
            resume,
        )
    elif status == "interrupted":
        log.warning(
            "run interrupted at epoch %d, step %d (%s), before its first checkpoint: nothing to resume",
            trainer.current_epoch,
            trainer.global_step,
            out_dir,
        )
    return metrics
