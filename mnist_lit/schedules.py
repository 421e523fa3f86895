"""Per-step schedules torch.optim.lr_scheduler does not offer ready-made.

A per-step schedule needs the run's step counts, which only the Trainer knows once the data
is set up; the Classifier passes ``total_steps`` and ``steps_per_epoch`` to every schedule
configured with ``interval: step``, so users never do that arithmetic.
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, OneCycleLR, SequentialLR


def warmup_cosine(
    optimizer: Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    warmup_epochs: float = 1.0,
    start_factor: float = 0.01,
    floor: float = 0.01,
) -> LRScheduler:
    """Linear rise from ``start_factor`` x peak to the peak, then cosine decay to ``floor`` x peak.

    The warmup ends after ``warmup_epochs`` epochs (capped so at least one decay step remains);
    the run's last step trains at the floor.
    """
    warmup = min(max(1, round(warmup_epochs * steps_per_epoch)), max(1, total_steps - 2))
    decay = max(1, total_steps - 1 - warmup)
    peak = optimizer.param_groups[0]["lr"]
    rise = LinearLR(optimizer, start_factor=start_factor, end_factor=1.0, total_iters=warmup)
    fall = CosineAnnealingLR(optimizer, T_max=decay, eta_min=floor * peak)
    return SequentialLR(optimizer, [rise, fall], milestones=[warmup])


def one_cycle(
    optimizer: Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    pct_start: float = 0.25,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    anneal_strategy: str = "cos",
) -> LRScheduler:
    """torch's OneCycleLR peaking at the optimizer's configured ``lr``.

    torch divides by the length of the rise, which is zero when it would end on the first step
    (``pct_start * total_steps == 1``: 4 steps at 0.25); a run that short rises over 2 steps instead.
    """
    if total_steps >= 3:
        pct_start = min(max(pct_start, 2 / total_steps), 1 - 1 / total_steps)
    elif pct_start * total_steps >= 1:
        pct_start = 0.25 / total_steps
    return OneCycleLR(
        optimizer,
        max_lr=[g["lr"] for g in optimizer.param_groups],
        total_steps=total_steps,
        pct_start=pct_start,
        div_factor=div_factor,
        final_div_factor=final_div_factor,
        anneal_strategy=anneal_strategy,
        cycle_momentum=False,
    )
