"""``python -m paced_cli ARGS``: the mnist_lit CLI with hooks a test can steer by environment.

* ``PACE_FROM=epoch:batch``: from that training batch on, every batch prints
  ``PACE <epoch> <batch>`` and then sleeps ``PACE_SLEEP`` seconds (default 0.2), which gives a
  test a reliable moment to send SIGINT or SIGTERM while training is under way.
* ``POISON_AT=epoch:batch``: that batch's images are replaced by NaN, so its loss is NaN.
* ``PACE_TRACE=1``: every batch prints its epoch, index, label sum and the weights' sum.
* ``PACE_START=seconds``: right after the run seeds itself (train() has started; the data, the
  model and the Trainer come next), print ``PACE start`` and sleep that long: a moment to stop a
  run while it starts that does not depend on how fast the machine is.
"""

from __future__ import annotations

import os
import time
from typing import Any

import lightning
from lightning.pytorch.callbacks import Callback

import mnist_lit.guards as guards
from mnist_lit.__main__ import main


def position(name: str) -> tuple[int, int] | None:
    value = os.environ.get(name)
    if not value:
        return None
    epoch, batch = value.split(":")
    return int(epoch), int(batch)


class Pace(Callback):
    def __init__(self) -> None:
        self.start = position("PACE_FROM")
        self.poison = position("POISON_AT")
        self.sleep = float(os.environ.get("PACE_SLEEP", "0.2"))
        self.trace = bool(os.environ.get("PACE_TRACE"))

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if (trainer.current_epoch, batch_idx) == self.poison:
            batch[0].fill_(float("nan"))

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.trace:
            w = sum(float(p.detach().double().sum()) for p in pl_module.parameters())
            print(f"TRACE {trainer.current_epoch} {batch_idx} {int(batch[1].sum())} {w!r}", flush=True)
        if self.start is not None and (trainer.current_epoch, batch_idx) >= self.start:
            print(f"PACE {trainer.current_epoch} {batch_idx}", flush=True)
            time.sleep(self.sleep)


def paced_callbacks(*args: Any, _original: Any = guards.guard_callbacks, **kwargs: Any) -> list[Callback]:
    return [*_original(*args, **kwargs), Pace()]


guards.guard_callbacks = paced_callbacks


def paced_seed(*args: Any, _original: Any = lightning.seed_everything, **kwargs: Any) -> int:
    seed = _original(*args, **kwargs)
    if os.environ.get("PACE_START"):
        print("PACE start", flush=True)
        time.sleep(float(os.environ["PACE_START"]))
    return seed


lightning.seed_everything = paced_seed  # mnist_lit.train calls lightning.seed_everything

if __name__ == "__main__":
    main()
