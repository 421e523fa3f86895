"""Speed benchmark: the package against hand-written PyTorch loops, measured in one run.

    python bench/bench.py                 # full run: table on stdout, JSON in bench/results.json
    python bench/bench.py --quick         # smoke run: every leg, a few batches each; JSON in
                                          # outputs/bench/quick.json (not committed)
    python bench/bench.py --legs steps_per_call,overhead   # only these legs; JSON in --out, else
                                          # outputs/bench/partial.json (never bench/results.json)
    python bench/bench.py --threads 2 --out /tmp/bench.json
    python bench/bench.py --override compile=true --override trainer.precision=bf16-mixed   # a GPU

Legs (each printed as a row and kept in the JSON), in the order they run:
  overhead    package throughput (images/s over a training epoch after warm-up, with its normal
              logging, TensorBoard, progress bar and checkpointing) / a plain loop (bench/baselines.py)
              with the same network, optimizer, schedule, batch size, in-memory data and threads;
              for twoconv also a bare LightningModule (forward and loss only, no logging or
              callbacks, one batch per training step) against the same loop: what Lightning's own
              loop costs without the package's steps_per_call. Package and plain loop run in
              turns ``--repeats`` times per case and the best of each is kept
  seeds       package / a plain loop fed by torchvision MNIST + ToTensor + Normalize via DataLoader
  time_to_99  whole-process wall time of ``experiment=fast`` against pytorch/examples' recipe
              (``experiment=examplesnet``) stopped at its first epoch with val/acc >= 99%
  side_by_side  two default runs started together against one alone (and the same at threads=2)
  flops       achieved training FLOP/s of twoconv (torch.utils.flop_counter) / a large matmul's
  startup     --help, --cfg job, a config error (and whether torch/lightning got imported),
              process start to the first training step
  steps_per_call  the default run (``python -m mnist_lit``, default config) at steps_per_call=16
              against steps_per_call=1, in turns ``--repeats`` times, best of each kept

The targets are in one table, report.TARGETS; the typed results and the printed table in report.py.

The package always runs as a user runs it: ``python -m mnist_lit ...`` in a fresh process; its
throughput comes from the run's own metrics.json (mnist_lit.perf.EpochTimer), timed the same way
as the plain loops here: every batch after the first ``WARMUP``, up to the end of the epoch.
twoconv trains full epochs; resnet the first ``--resnet-batches`` batches of one. On a machine
with a CUDA GPU everything runs there unchanged (accelerator=auto, the plain loops' data on the GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from baselines import (
    LoopRate,
    build,
    device,
    has_mnist,
    load,
    machine_name,
    plain_in_memory,
    plain_torchvision,
    sync,
)
from report import (
    OVERHEAD_TARGET_BATCHES,
    TARGETS,
    BenchResult,
    Flops,
    Machine,
    OverheadRow,
    Seeds,
    SideBySide,
    SpcSide,
    Startup,
    StartupCase,
    StepsPerCall,
    TimeTo99,
    ratio,
    table,
    to_json,
)
from torch.nn import functional as F

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
THRESHOLD = 0.99  # the accuracy time_to_99 times the runs to (not a target: TARGETS has those)
QUICK_BATCHES = 25  # --quick: batches per training leg
QUICK_LIMITS = [
    f"trainer.limit_train_batches={QUICK_BATCHES}",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
]
LEGS = ("overhead", "seeds", "time_to_99", "side_by_side", "flops", "startup", "steps_per_call")
# legs that read another leg's results and cannot run without it
NEEDS = {"seeds": "overhead", "flops": "overhead"}
SPC_MANY, SPC_ONE = 16, 1  # the steps_per_call leg's two settings


@dataclass(frozen=True)
class Setup:
    """What every package run of one bench run shares; fixed once the bench starts."""

    tmp: Path  # run folders go here
    root: Path  # MNIST_ROOT
    threads: int
    repeats: int  # runs per side of a ratio, the best of each kept
    # --override: extra overrides for every package run (e.g. compile=true channels_last=true
    # trainer.precision=bf16-mixed on a GPU); the plain loops stay plain float32
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class FastRun:
    """experiment=fast's run in time_to_99, for the FLOP/s leg: its throughput, batch and layout."""

    images_per_s: float | None
    batch: int
    channels_last: bool


# ---- running the package as a user does -------------------------------------------------------------------
def user_env(root: Path) -> dict[str, str]:
    """The environment a user's shell gives the package: MNIST_ROOT set, no HYDRA_FULL_ERROR."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["MNIST_ROOT"] = str(root)
    return env


def cli(
    args: list[str], cwd: Path, root: Path, timeout: float = 900, python_flags: list[str] | None = None
) -> tuple[subprocess.CompletedProcess[str], float, float]:
    """``python -m mnist_lit ARGS`` in a fresh process: (result, wall seconds, start time.time())."""
    env = user_env(root)
    started = time.time()
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, *(python_flags or []), "-m", "mnist_lit", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc, time.perf_counter() - t0, started


def package_run(
    setup: Setup, args: list[str], name: str, timeout: float = 1800
) -> tuple[dict[str, Any], float, float, float | None]:
    """A package run into setup.tmp/name, as a user starts it (with the bench's --override's).

    Returns its metrics.json, the whole-process wall seconds (shell to exit), the start time
    (``time.time()``), and the seconds from the shell to the first printed line that shows the
    test accuracy (None if none did): the process's output is read as it comes.
    """
    run_dir = setup.tmp / name
    env = user_env(setup.root)
    cmd = [sys.executable, "-m", "mnist_lit", *args, *setup.overrides, f"hydra.run.dir={run_dir}"]
    started = time.time()
    t0 = time.perf_counter()
    printed = None
    lines: list[str] = []
    with subprocess.Popen(
        cmd, cwd=setup.tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if printed is None and "test/acc" in line:
                printed = time.perf_counter() - t0
            lines.append(line)
        code = proc.wait(timeout=timeout)
    wall = time.perf_counter() - t0
    if code != 0:
        tail = "".join(lines[-25:])
        raise RuntimeError(f"python -m mnist_lit {' '.join(args)} failed ({code}):\n{tail}")
    return json.loads((run_dir / "metrics.json").read_text()), wall, started, printed


def bare_in_fresh_process(setup: Setup, model: str, batch: int, cap: int | None) -> LoopRate:
    """baselines.bare_lightning in its own process, started like the package's runs are."""
    cmd = [sys.executable, str(BENCH / "baselines.py"), "bare", model, str(batch), "--batches", str(cap or 0)]
    cmd += ["--threads", str(setup.threads), "--data-root", str(setup.root)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"bare Lightning run failed:\n{proc.stderr[-2000:]}")
    return LoopRate(**json.loads(proc.stdout.strip().splitlines()[-1]))


# ---- legs ------------------------------------------------------------------------------------------------
def leg_overhead(
    setup: Setup,
    data: tuple[torch.Tensor, torch.Tensor],
    models: list[str],
    batches: list[int],
    limit: int | None,
    resnet_batches: int,
) -> list[OverheadRow]:
    """Per model and batch size: the package (a fresh process) and then the plain loop.

    twoconv trains a full epoch; resnet (about 15x the compute per image) the first
    ``resnet_batches`` batches of one, so the whole bench stays within minutes on two cores.
    """
    cases = [(model, batch, False, None) for model in models for batch in batches]
    if limit is None:
        # twoconv at 128 for the FLOP/s leg's best batch size (the targets are at 64 and 32), at
        # 64 in channels_last, the layout this CPU runs twoconv's convolutions fastest in, and at 64
        # and 32 with one batch per Lightning training step (steps_per_call=1) instead of auto's 16
        cases[len(batches) : len(batches)] = [
            ("twoconv", 128, False, None),
            ("twoconv", 64, True, None),
            ("twoconv", 64, False, 1),
            ("twoconv", 32, False, 1),
        ]
    rows = []
    for model, batch, channels_last, per_call in cases:
        cap = limit if limit is not None else (resnet_batches if model == "resnet" else None)
        args = [
            f"model={model}",
            "optim=adam",
            "sched=onecycle",
            f"data.batch_size={batch}",
            "trainer.max_epochs=1",
            f"threads={setup.threads}",
            "accelerator=auto",
            f"channels_last={str(channels_last).lower()}",
        ]
        if per_call is not None:
            args.append(f"steps_per_call={per_call}")
        if limit is not None:
            args += QUICK_LIMITS
        elif cap is not None:
            args.append(f"trainer.limit_train_batches={cap}")
        name = f"{model}_b{batch}" + ("_cl" if channels_last else "")
        name += f"_spc{per_call}" if per_call else ""
        # package and plain loop in turns, the best of each kept: a burst of load from another
        # program on the shared cores then shifts neither side of the ratio
        timings: list[dict[str, Any]] = []
        plains: list[LoopRate] = []
        for repeat in range(setup.repeats):
            metrics, wall, started, _ = package_run(setup, args, f"{name}_{repeat}")
            timings.append(metrics["timing"])
            if repeat == 0:
                first = (metrics, wall, started)
            plains.append(plain_in_memory(model, batch, data, cap, channels_last))
        metrics, wall, started = first
        pkg = max(t["train_images_per_s"] for t in timings)
        pkg_cpu = max(t.get("train_images_per_cpu_s") or 0 for t in timings) or None
        plain = max(p.images_per_s for p in plains)
        plain_cpu = max(p.images_per_cpu_s for p in plains)
        plain_layout = model != "twoconv" or channels_last or per_call is not None
        bare = None if plain_layout else bare_in_fresh_process(setup, model, batch, cap)
        targeted = per_call is None and not channels_last and batch in OVERHEAD_TARGET_BATCHES
        rows.append(
            OverheadRow(
                model=model,
                batch=batch,
                channels_last=channels_last,
                steps_per_call=metrics.get("steps_per_call"),
                default_steps_per_call=per_call is None,
                train_batches=cap or "epoch",
                package_images_per_s=pkg,
                plain_images_per_s=plain,
                ratio=ratio(pkg, plain),
                target=TARGETS["overhead"].bound if targeted else None,
                package_images_per_cpu_s=pkg_cpu,
                plain_images_per_cpu_s=plain_cpu,
                cpu_ratio=ratio(pkg_cpu, plain_cpu),
                package_runs_images_per_s=[t["train_images_per_s"] for t in timings],
                plain_runs_images_per_s=[p.images_per_s for p in plains],
                bare_lightning_images_per_s=bare and bare.images_per_s,
                bare_lightning_ratio=bare and ratio(bare.images_per_s, plain),
                package_wall_s=round(wall, 2),
                first_step_s=round(metrics["timing"]["first_step_at"] - started, 2),
            )
        )
        print(f"  overhead {name}: {asdict(rows[-1])}", flush=True)
    return rows


def twoconv_row(overhead: list[OverheadRow], batch: int, channels_last: bool = False) -> OverheadRow | None:
    """The overhead leg's twoconv row at ``batch`` and layout, at the default steps_per_call."""
    rows = [r for r in overhead if r.model == "twoconv" and r.batch == batch and r.default_steps_per_call]
    return next((r for r in rows if r.channels_last == channels_last), None)


def hand_twoconv_epoch_s(
    overhead: list[OverheadRow] | None, data: tuple[torch.Tensor, torch.Tensor], limit: int | None
) -> float:
    """Seconds the plain twoconv loop at batch 64 takes for an epoch of ``data``, for time_to_99:
    the overhead leg's measurement, or (that leg skipped) one run of the loop now."""
    row = twoconv_row(overhead, 64) if overhead else None
    rate = row.plain_images_per_s if row else plain_in_memory("twoconv", 64, data, limit).images_per_s
    return round(len(data[1]) / rate, 2)


def leg_seeds(setup: Setup, overhead: list[OverheadRow], train_idx: torch.Tensor, limit: int | None) -> Seeds:
    """The package at batch 64 (default layout, and channels_last when measured) / the reports' loop."""
    row = twoconv_row(overhead, 64)
    if row is None:
        raise RuntimeError("the seeds leg needs the overhead leg's twoconv batch 64 row")
    cl = twoconv_row(overhead, 64, channels_last=True)
    # the best of as many runs as the package's throughput is the best of
    runs = [plain_torchvision("twoconv", 64, setup.root, train_idx, limit) for _ in range(setup.repeats)]
    seeds = max(runs, key=lambda r: r.images_per_s)
    out = Seeds(
        model="twoconv",
        batch=64,
        package_images_per_s=row.package_images_per_s,
        torchvision_loop_images_per_s=seeds.images_per_s,
        ratio=ratio(row.package_images_per_s, seeds.images_per_s),
        target=TARGETS["seeds"].bound,
        channels_last_package_images_per_s=cl and cl.package_images_per_s,
        channels_last_ratio=cl and ratio(cl.package_images_per_s, seeds.images_per_s),
    )
    print(f"  seeds: {asdict(out)}", flush=True)
    return out


def leg_time_to_99(
    setup: Setup, quick: bool, examples_epochs: int, hand_epoch_s: float
) -> tuple[TimeTo99, FastRun]:
    """fast's whole process vs examplesnet's recipe run until its first epoch at val/acc >= 99%.

    Both are whole processes, timed from the shell to the printed test accuracy (and to exit).
    The recipe's leg stops at the first epoch whose validation accuracy reaches 99% (Lightning's
    EarlyStopping stopping_threshold), capped at ``examples_epochs`` epochs to stay affordable
    (on 55,000 training images it got there in its 5th epoch here). If the cap stops it first,
    ``examplesnet_reached_99`` says false and its time is a lower bound.
    ``hand_epoch_s``: the plain twoconv loop's epoch (hand_twoconv_epoch_s).
    Also returns fast's throughput, batch and layout, for the FLOP/s leg.
    """
    tiny = QUICK_LIMITS if quick else []
    threads = f"threads={setup.threads}"
    fast, fast_wall, _, fast_printed = package_run(
        setup, ["experiment=fast", threads, "accelerator=auto", *tiny], "fast"
    )
    from omegaconf import OmegaConf

    fast_cfg = OmegaConf.load(setup.tmp / "fast" / ".hydra" / "config.yaml")
    fast_run = FastRun(
        images_per_s=fast["timing"]["train_images_per_s"],
        batch=int(fast_cfg.data.batch_size),
        channels_last=bool(fast_cfg.channels_last),
    )
    cap = 1 if quick else examples_epochs
    ex_args = [
        "experiment=examplesnet",
        threads,
        "accelerator=auto",
        f"trainer.max_epochs={cap}",
        "early_stopping.enabled=true",
        # EarlyStopping stops when val/acc > threshold; validation accuracy moves in steps of 1/5000
        f"early_stopping.stopping_threshold={THRESHOLD - 1e-4}",
        *tiny,
    ]
    ex, ex_wall, _, ex_printed = package_run(setup, ex_args, "examplesnet")
    reached = (ex.get("val/acc_best") or 0) >= THRESHOLD
    # training seconds per epoch of its 55,000 images (timed after warm-up, scaled to the epoch)
    epoch_s = [e["seconds"] * 55_000 / e["images"] for e in ex["timing"]["train_epochs"]]
    # the measure: shell to the printed test accuracy; the process then still takes about
    # a second to exit (Python unloading torch and Lightning), kept in *_exit_s
    fast_s = fast_printed or fast_wall
    ex_s = ex_printed or ex_wall
    out = TimeTo99(
        fast_wall_s=round(fast_s, 2),
        fast_exit_s=round(fast_wall, 2),
        fast_test_acc=fast.get("test/acc"),
        fast_epochs=fast["epochs"],
        fast_reached_99=(fast.get("test/acc") or 0) >= THRESHOLD,
        examplesnet_wall_s=round(ex_s, 2),
        examplesnet_exit_s=round(ex_wall, 2),
        examplesnet_epochs=ex["epochs"],
        examplesnet_epoch_cap=cap,
        examplesnet_epoch_s=[round(t, 2) for t in epoch_s],
        examplesnet_val_acc_best=ex.get("val/acc_best"),
        examplesnet_test_acc=ex.get("test/acc"),
        examplesnet_reached_99=reached,
        speedup=ratio(ex_s, fast_s),
        target_speedup=TARGETS["time_to_99"].bound,
        hand_twoconv_epoch_s=hand_epoch_s,
        fast_over_2_hand_epochs=ratio(fast_s, 2 * hand_epoch_s),
        target_fast_over_2_hand_epochs=TARGETS["fast_over_2_hand_epochs"].bound,
    )
    print(f"  time_to_99: {asdict(out)}", flush=True)
    return out, fast_run


def leg_side_by_side(setup: Setup, quick: bool) -> SideBySide:
    """Two default runs started together by hand, against one alone, in this bench run.

    Each run chooses its torch threads from the cores other programs leave free (mnist_lit/threads.py).
    For contrast, the same with ``threads=2`` fixed: every run on every core, as torch does by default.
    Rates are each run's own training throughput (metrics.json), one epoch each.
    """
    args = ["trainer.max_epochs=1", "trainer.enable_progress_bar=false", *(QUICK_LIMITS if quick else [])]

    def rate(metrics: dict[str, Any]) -> float:
        return float(metrics["timing"]["train_images_per_s"])

    def alone(name: str, extra: list[str]) -> float:
        return max(rate(package_run(setup, [*args, *extra], f"{name}_{i}")[0]) for i in range(setup.repeats))

    def together(name: str, extra: list[str]) -> list[float]:
        found: dict[int, float] = {}

        def one(i: int) -> None:
            found[i] = rate(package_run(setup, [*args, *extra], f"{name}_{i}")[0])

        pair = [threading.Thread(target=one, args=(i,)) for i in range(2)]
        for t in pair:
            t.start()
        for t in pair:
            t.join()
        if len(found) != 2:
            raise RuntimeError(f"side by side ({name}): a run failed")
        return [found[0], found[1]]

    solo = alone("solo", [])
    pair = together("pair", [])
    fixed_solo = alone("fixed_solo", ["threads=2"])
    fixed_pair = together("fixed_pair", ["threads=2"])
    return SideBySide(
        solo_images_per_s=round(solo, 1),
        pair_images_per_s=[round(r, 1) for r in pair],
        pair_over_solo=[ratio(r, solo) for r in pair],
        target_pair_over_solo=TARGETS["pair_over_solo"].bound,
        fixed_solo_images_per_s=round(fixed_solo, 1),
        fixed_pair_images_per_s=[round(r, 1) for r in fixed_pair],
        fixed_pair_over_solo=[ratio(r, fixed_solo) for r in fixed_pair],
        solo_over_fixed_solo=ratio(solo, fixed_solo),
        target_solo_over_fixed_solo=TARGETS["solo_over_fixed_solo"].bound,
    )


def matmul_flops(n: int, seconds: float) -> float:
    """float32 FLOP/s of an n x n matrix product, repeated for about ``seconds``."""
    dev = device()
    a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    a @ b
    sync()
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
        if dev.type == "cuda":
            sync()
    sync()
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def train_step_flops(model: str, batch: int) -> int:
    """FLOPs of one training step (forward + backward) of ``model`` at ``batch``, as torch counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    net = build(model)
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(net(x), y).backward()
    return counter.get_total_flops()


def leg_flops(overhead: list[OverheadRow], fast: FastRun | None, quick: bool) -> Flops:
    """Achieved training FLOP/s over a large matmul's: the default run's best batch, and fast's settings.

    experiment=fast is where the cheap raises live (batch 256, channels_last); its throughput
    comes from its own metrics.json (``fast``, from the time_to_99 leg; None when it did not run),
    timed like every other package run.
    """
    rows = [r for r in overhead if r.model == "twoconv" and not r.channels_last]
    best = max(rows, key=lambda r: r.package_images_per_s)
    per_image = train_step_flops("twoconv", best.batch) / best.batch
    achieved = per_image * best.package_images_per_s
    peak = matmul_flops(1024 if quick else 2048, 0.5 if quick else 3.0)
    fast_rate = fast.images_per_s if fast else None
    fast_batch = fast.batch if fast else None
    fast_achieved = (
        train_step_flops("twoconv", fast_batch) / fast_batch * fast_rate if fast_rate and fast_batch else None
    )
    out = Flops(
        model="twoconv",
        best_batch=best.batch,
        train_flop_per_image=int(per_image),
        achieved_flop_per_s=round(achieved),
        matmul_flop_per_s=round(peak),
        fraction_of_matmul=round(achieved / peak, 4),
        fast_batch=fast_batch,
        fast_channels_last=fast.channels_last if fast else None,
        fast_images_per_s=fast_rate,
        fast_achieved_flop_per_s=round(fast_achieved) if fast_achieved else None,
        fast_fraction_of_matmul=round(fast_achieved / peak, 4) if fast_achieved else None,
    )
    print(f"  flops: {asdict(out)}", flush=True)
    return out


def heavy_imports(args: list[str], cwd: Path, root: Path) -> tuple[list[str], int, float]:
    """Which of torch / lightning ``python -m mnist_lit ARGS`` imported (by -X importtime); exit, seconds."""
    proc, wall, _ = cli(args, cwd, root, timeout=120, python_flags=["-X", "importtime"])
    names = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    heavy = sorted(n for n in ("torch", "lightning", "pytorch_lightning") if n in names)
    return heavy, proc.returncode, wall


def leg_startup(setup: Setup, overhead: list[OverheadRow] | None, repeats: int) -> Startup:
    """Best of ``repeats`` wall times per case (0: the import-checking run's own time, slightly slower).

    The first training step's time is the overhead leg's runs' earliest (None when it did not run).
    """
    cases = {
        "help": ["--help"],
        "cfg_job": ["--cfg", "job"],
        "config_error": ["data.batch_size=0"],
    }
    found: dict[str, StartupCase] = {}
    for name, args in cases.items():
        heavy, code, wall = heavy_imports(args, setup.tmp, setup.root)
        times = [cli(args, setup.tmp, setup.root, timeout=120)[1] for _ in range(repeats)] or [wall]
        found[name] = StartupCase(
            seconds=round(min(times), 3),
            exit_code=code,
            expected_exit_code=2 if name == "config_error" else 0,
            heavy_imports=heavy,
            target_s=TARGETS["startup"].bound,
        )
    out = Startup(
        help=found["help"],
        cfg_job=found["cfg_job"],
        config_error=found["config_error"],
        first_training_step_s=min(r.first_step_s for r in overhead) if overhead else None,
    )
    print(f"  startup: {asdict(out)}", flush=True)
    return out


def leg_steps_per_call(setup: Setup, quick: bool) -> StepsPerCall:
    """Is the default run at steps_per_call=16 at least TARGETS["steps_per_call"] faster than at 1?

    Each run is started as a user starts it, ``python -m mnist_lit steps_per_call=N threads=T``:
    the package's default config otherwise (twoconv, batch 64, its default epochs; --quick adds
    the quick limits). The two run in turns ``setup.repeats`` times and the best of each is kept:
    training throughput from the run's own metrics.json (EpochTimer, its last epoch after
    warm-up), and the whole process, shell to exit.
    """
    common = [f"threads={setup.threads}", *(QUICK_LIMITS if quick else [])]
    found: dict[int, list[tuple[dict[str, Any], float]]] = {SPC_MANY: [], SPC_ONE: []}
    for repeat in range(setup.repeats):
        for per_call in (SPC_MANY, SPC_ONE):
            args = [f"steps_per_call={per_call}", *common]
            metrics, wall, _, _ = package_run(setup, args, f"spc{per_call}_{repeat}")
            found[per_call].append((metrics, wall))

    def side(per_call: int) -> SpcSide:
        runs = found[per_call]
        resolved = {m.get("steps_per_call") for m, _ in runs}
        if resolved != {per_call}:
            raise RuntimeError(f"steps_per_call={per_call} ran at {sorted(map(str, resolved))}")
        rates = [m["timing"]["train_images_per_s"] for m, _ in runs]
        walls = [round(w, 2) for _, w in runs]
        return SpcSide(
            steps_per_call=per_call,
            images_per_s=max(rates),
            wall_s=min(walls),
            runs_images_per_s=rates,
            runs_wall_s=walls,
        )

    from omegaconf import OmegaConf

    run_dir = setup.tmp / f"spc{SPC_MANY}_0" / ".hydra"
    choices = OmegaConf.load(run_dir / "hydra.yaml").hydra.runtime.choices
    many, one = side(SPC_MANY), side(SPC_ONE)
    out = StepsPerCall(
        model=str(choices.model),
        batch=int(OmegaConf.load(run_dir / "config.yaml").data.batch_size),
        epochs=int(found[SPC_MANY][0][0]["epochs"]),
        train_batches=QUICK_BATCHES if quick else "epoch",
        many=many,
        one=one,
        ratio=ratio(many.images_per_s, one.images_per_s),
        target=TARGETS["steps_per_call"].bound,
        wall_ratio=ratio(one.wall_s, many.wall_s),
    )
    print(f"  steps_per_call: {asdict(out)}", flush=True)
    return out


# ---- the command -----------------------------------------------------------------------------------------
def parse_legs(text: str | None) -> tuple[str, ...] | None:
    """``--legs a,b``: the legs named, in LEGS's order (None: every leg); ValueError for a bad list."""
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in LEGS]
    if unknown or not names:
        named = ", ".join(unknown) or "(none given)"
        raise ValueError(f"unknown leg(s) {named}; the legs: {', '.join(LEGS)}")
    for leg in names:
        if leg in NEEDS and NEEDS[leg] not in names:
            need = NEEDS[leg]
            raise ValueError(f"the {leg} leg reads the {need} leg's results: add {need} to --legs")
    return tuple(leg for leg in LEGS if leg in names)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: every leg, a few batches")
    p.add_argument(
        "--legs",
        help=f"only these legs, comma-separated (default: all: {','.join(LEGS)}); the JSON then goes to "
        "--out, else outputs/bench/partial.json, never bench/results.json",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="JSON results file (default: bench/results.json for a full run; a --quick run's numbers "
        "mean nothing, so they go to outputs/bench/quick.json, which is not committed)",
    )
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads, everywhere")
    p.add_argument(
        "--data-root", type=Path, default=Path(os.environ.get("MNIST_ROOT", "data")), help="MNIST root"
    )
    p.add_argument(
        "--override", action="append", default=[], help="KEY=VALUE for every package run (repeatable)"
    )
    p.add_argument("--resnet-batches", type=int, default=300, help="resnet's timed batches per run")
    p.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="overhead and steps_per_call legs: runs per side of a ratio (best kept)",
    )
    p.add_argument("--examples-epochs", type=int, default=6, help="cap on examplesnet's epochs to 99%%")
    a = p.parse_args(argv)
    try:
        a.legs = parse_legs(a.legs)
    except ValueError as e:
        p.error(str(e))
    committed = REPO / "bench" / "results.json"
    if a.legs is not None:
        a.out = a.out or REPO / "outputs" / "bench" / "partial.json"
        if a.out.resolve() == committed:
            p.error("--legs runs only some legs: their JSON never replaces bench/results.json")
    elif a.out is None:
        a.out = REPO / "outputs" / "bench" / "quick.json" if a.quick else committed
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    legs = a.legs or LEGS
    if not has_mnist(a.data_root):
        print(f"error: no MNIST/raw/ under --data-root {a.data_root} (or MNIST_ROOT)", file=sys.stderr)
        return 2
    x, y, train_idx = load(a.data_root, a.threads)
    limit = QUICK_BATCHES if a.quick else None
    models = ["twoconv"] if a.quick else ["twoconv", "resnet"]
    batches = [64] if a.quick else [64, 32]
    started = time.perf_counter()
    overhead = seeds = time_to_99 = side_by_side = flops = startup = steps_per_call = fast = None
    with tempfile.TemporaryDirectory(prefix="mnist_lit_bench_") as tmp:
        setup = Setup(
            tmp=Path(tmp),
            root=a.data_root.resolve(),
            threads=a.threads,
            repeats=1 if a.quick else max(1, a.repeats),
            overrides=tuple(a.override),
        )
        if "overhead" in legs:
            overhead = leg_overhead(setup, (x, y), models, batches, limit, a.resnet_batches)
        if "seeds" in legs:
            seeds = leg_seeds(setup, overhead, train_idx, limit)
        if "time_to_99" in legs:
            hand_epoch_s = hand_twoconv_epoch_s(overhead, (x, y), limit)
            time_to_99, fast = leg_time_to_99(setup, a.quick, a.examples_epochs, hand_epoch_s)
        if "side_by_side" in legs:
            side_by_side = leg_side_by_side(setup, a.quick)
        if "flops" in legs:
            flops = leg_flops(overhead, fast, a.quick)
        if "startup" in legs:
            startup = leg_startup(setup, overhead, 0 if a.quick else 3)
        if "steps_per_call" in legs:
            steps_per_call = leg_steps_per_call(setup, a.quick)
    res = BenchResult(
        quick=a.quick,
        machine=Machine(
            device=machine_name(),
            threads=a.threads,
            package_overrides=a.override,
            cpus=os.cpu_count(),
            torch=torch.__version__,
            python=platform.python_version(),
        ),
        overhead=overhead,
        seeds=seeds,
        time_to_99=time_to_99,
        side_by_side=side_by_side,
        flops=flops,
        startup=startup,
        steps_per_call=steps_per_call,
        bench_seconds=round(time.perf_counter() - started, 1),
    )
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(to_json(res), indent=2) + "\n")
    print()
    print(table(res))
    print(f"\nbench took {res.bench_seconds} s; JSON: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
