"""How many torch threads a run trains with: ``threads=``, its share of the cores under the joblib
launcher, or else the cores that other programs leave free, counted again while it trains.

OpenMP threads that outnumber the free cores do not simply share them: at every parallel region
each waits for the others, spinning, so two runs of two threads on two cores each train several
times slower than one thread each would. So a run that chooses for itself counts the cores the
rest of the machine keeps busy (the system's CPU time from /proc/stat, less this process's own)
when training starts and every few seconds after, and trains on what is left, one thread at
least. A second run started beside a first one takes one core; the first gives one up within
seconds, and takes it back when the second ends.

Only the standard library and Hydra are imported here: the sweep callbacks use the joblib share
before torch loads. The callback that applies the count while training is perf.FairThreads.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from mnist_lit.errors import UserError

# another program counts as holding a core once it keeps half of one busy or more
BUSY_CORE = 0.5
# seconds between two counts while training
EVERY_S = 3.0


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, which containers and SLURM restrict)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def job_threads(requested: int | None) -> int | None:
    """Torch threads for this job: ``threads`` when set, else cores / parallel jobs under joblib.

    Returns None when the run should choose for itself (``FairThreads``): it does not share the
    machine with sibling jobs of its own sweep, but may share it with anything else.
    """
    if requested:
        return requested
    if not HydraConfig.initialized():
        return None
    parallel = parallel_jobs(HydraConfig.get().launcher)
    return None if parallel is None else max(1, available_cores() // parallel)


def parallel_jobs(launcher: DictConfig) -> int | None:
    """How many jobs the joblib launcher runs at once (its ``n_jobs``); None for other launchers.

    joblib's ``n_jobs`` follows its own convention: -1 is every core, -2 all but one, and so on.
    """
    if "joblib" not in str(launcher.get("_target_", "")).lower():
        return None
    n_jobs = launcher.get("n_jobs")
    if not isinstance(n_jobs, int) or isinstance(n_jobs, bool) or n_jobs == 0:
        raise UserError(
            f"hydra.launcher.n_jobs={n_jobs} is not allowed: use a whole number of jobs at once, "
            "or -1 for one per core (-2 all cores but one, ...)"
        )
    return n_jobs if n_jobs > 0 else max(1, available_cores() + 1 + n_jobs)


class CoreMeter:
    """Cores that other processes kept busy between two readings (None where /proc/stat is not)."""

    def __init__(self) -> None:
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.last = self.reading()

    def reading(self) -> tuple[float, float, float] | None:
        """(wall seconds, CPU seconds busy on the whole machine, CPU seconds of this process)."""
        try:
            first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        except OSError:
            return None
        if not first or first[0] != "cpu":
            return None
        ticks = [int(v) for v in first[1:9]]  # user nice system idle iowait irq softirq steal
        busy = sum(ticks) - ticks[3] - ticks[4]
        return time.monotonic(), busy / self.hz, time.process_time()

    def others(self) -> float | None:
        """Cores busy with other processes since the last call (or since this meter was made)."""
        now = self.reading()
        last, self.last = self.last, now
        if now is None or last is None or now[0] - last[0] < 0.2:
            return None
        wall, busy, own = (a - b for a, b in zip(now, last, strict=True))
        return max(0.0, (busy - own) / wall)


def fair_share(cores: int, others: float) -> int:
    """Threads that leave the cores other programs use to them: at least one, at most ``cores``."""
    return max(1, min(cores, cores - math.floor(others + (1 - BUSY_CORE))))
