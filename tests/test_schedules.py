"""The learning rate of every step of a short run, against the closed-form value of each schedule.

The schedules are sized by the Trainer (steps per epoch x trainer.max_epochs); the run here has
10 steps per epoch and 3 epochs, so the expected values below are computed from those numbers.
"""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from hydra import compose
from hydra.utils import instantiate
from torch.utils.data import DataLoader, TensorDataset

from mnist_lit.module import Classifier

STEPS_PER_EPOCH, EPOCHS, LR = 10, 3, 0.1
TOTAL = STEPS_PER_EPOCH * EPOCHS


class LrTrace(L.Callback):
    """The lr each optimizer step actually uses."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def trace(sched: str, *overrides: str) -> list[float]:
    cfg = compose(
        config_name="config", overrides=[f"sched={sched}", "optim=sgd", f"optim.lr={LR}", *overrides]
    )
    torch.manual_seed(0)
    x = torch.randn(STEPS_PER_EPOCH * 4, 1, 28, 28)
    y = torch.randint(0, 10, (len(x),))
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    model = Classifier(
        backbone=torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)),
        optimizer=instantiate(cfg.optim),
        scheduler=instantiate(cfg.sched.scheduler),
        interval=cfg.sched.interval,
    )
    lr_trace = LrTrace()
    trainer = L.Trainer(
        max_epochs=EPOCHS,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[lr_trace],
    )
    trainer.fit(model, train_dataloaders=loader)
    assert len(lr_trace.lrs) == TOTAL
    return lr_trace.lrs


def test_constant(hydra_conf: None) -> None:
    assert trace("constant") == pytest.approx([LR] * TOTAL, rel=1e-12)


def test_steplr_steps_each_epoch(hydra_conf: None) -> None:
    lrs = trace("steplr", "sched.scheduler.step_size=1", "sched.scheduler.gamma=0.5")
    expected = [LR * 0.5 ** (i // STEPS_PER_EPOCH) for i in range(TOTAL)]
    assert lrs == pytest.approx(expected, rel=1e-9)


def test_steplr_step_size_two(hydra_conf: None) -> None:
    lrs = trace("steplr", "sched.scheduler.step_size=2", "sched.scheduler.gamma=0.1")
    expected = [LR * 0.1 ** ((i // STEPS_PER_EPOCH) // 2) for i in range(TOTAL)]
    assert lrs == pytest.approx(expected, rel=1e-9)


def test_exponential_multiplies_by_gamma_each_epoch(hydra_conf: None) -> None:
    lrs = trace("exponential")  # conf/sched/exponential.yaml: An et al.'s 0.98
    expected = [LR * 0.98 ** (i // STEPS_PER_EPOCH) for i in range(TOTAL)]
    assert lrs == pytest.approx(expected, rel=1e-9)


def test_warmup_rises_linearly_then_cosine_to_the_floor(hydra_conf: None) -> None:
    start, floor, warm = 0.01, 0.05, STEPS_PER_EPOCH  # warmup_epochs=1 -> 10 steps
    lrs = trace(
        "warmup",
        "sched.scheduler.warmup_epochs=1",
        f"sched.scheduler.start_factor={start}",
        f"sched.scheduler.floor={floor}",
    )
    decay = TOTAL - 1 - warm
    expected = [LR * (start + (1 - start) * i / warm) for i in range(warm)]
    expected += [
        LR * floor + (LR - LR * floor) * (1 + math.cos(math.pi * (i - warm) / decay)) / 2
        for i in range(warm, TOTAL)
    ]
    assert lrs == pytest.approx(expected, rel=1e-9)
    assert lrs[0] == pytest.approx(start * LR)  # start: a small fraction of the peak
    assert lrs[warm] == pytest.approx(LR) and max(lrs) == pytest.approx(LR)  # the peak ends the warmup
    assert lrs[-1] == pytest.approx(floor * LR)  # the last step trains at the floor
    assert all(b < a for a, b in zip(lrs[warm:], lrs[warm + 1 :], strict=False))  # smooth, strictly falling


def test_warmup_follows_max_epochs(hydra_conf: None) -> None:
    """Half an epoch of warmup, on the same run: the schedule scales itself to the real step count."""
    lrs = trace("warmup", "sched.scheduler.warmup_epochs=0.5", "sched.scheduler.floor=0.0")
    assert lrs.index(max(lrs)) == STEPS_PER_EPOCH // 2
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)


def test_onecycle_peaks_at_lr_and_ends_near_zero(hydra_conf: None) -> None:
    lrs = trace("onecycle", "sched.scheduler.pct_start=0.2")
    div, final_div = 25.0, 1e4
    assert lrs[0] == pytest.approx(LR / div)
    assert max(lrs) == pytest.approx(LR)
    assert lrs.index(max(lrs)) == round(0.2 * TOTAL) - 1
    assert lrs[-1] == pytest.approx(LR / div / final_div)
