"""Speed benchmark: the package against hand-written PyTorch loops, measured in one run.

    python bench/bench.py                 # full run: table on stdout, JSON in bench/results.json
    python bench/bench.py --quick         # smoke run: every leg, a few batches each; JSON in
                                          # outputs/bench/quick.json (not committed)
    python bench/bench.py --threads 2 --out /tmp/bench.json
    python bench/bench.py --override compile=true --override trainer.precision=bf16-mixed   # a GPU

Legs (each printed as a row and kept in the JSON):
  overhead    package throughput (images/s over a training epoch after warm-up, with its normal
              logging, TensorBoard, progress bar and checkpointing) / a plain loop in this file
              with the same network, optimizer, schedule, batch size, in-memory data and threads;
              for twoconv also a bare LightningModule (forward and loss only, no logging or
              callbacks, one batch per training step) against the same loop: what Lightning's own
              loop costs without the package's steps_per_call. Package and plain loop run in
              turns ``--repeats`` times per case and the best of each is kept
  seeds       package / a plain loop fed by torchvision MNIST + ToTensor + Normalize via DataLoader
  time_to_99  whole-process wall time of ``experiment=fast`` against pytorch/examples' recipe
              (``experiment=examplesnet``) stopped at its first epoch with val/acc >= 99%
  flops       achieved training FLOP/s of twoconv (torch.utils.flop_counter) / a large matmul's
  startup     --help, --cfg job, a config error (and whether torch/lightning got imported),
              process start to the first training step

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
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

REPO = Path(__file__).resolve().parents[1]
WARMUP = 20  # batches left out of every throughput, as mnist_lit.perf.EpochTimer does
MEAN, STD = 0.1307, 0.3081
SEED = 42
VAL_SIZE = 5000
THRESHOLD = 0.99
# --override: extra overrides for every package run (e.g. compile=true channels_last=true
# trainer.precision=bf16-mixed on a GPU); the plain loops stay plain float32
PACKAGE_OVERRIDES: list[str] = []
QUICK_BATCHES = 25  # --quick: batches per training leg
GATHER = 8  # the plain in-memory loop gathers and normalises this many batches at once
QUICK_LIMITS = [
    f"trainer.limit_train_batches={QUICK_BATCHES}",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
]


# ---- helpers ---------------------------------------------------------------------------------------------
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def machine_name() -> str:
    """The GPU's name, else the CPU's model name (for the table's heading and the JSON)."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def build(model: str) -> nn.Module:
    """The package's own backbone class for ``model`` (the same network, not a look-alike)."""
    from mnist_lit import models

    names = {"twoconv": "TwoConv", "resnet": "ResNet8", "examplesnet": "ExamplesNet"}
    return getattr(models, names[model])()


def optimizer_for(net: nn.Module, steps: int) -> tuple[torch.optim.Optimizer, Any]:
    """The package's default: Adam lr 0.002 with a per-step one-cycle schedule over the epoch."""
    opt = torch.optim.Adam(net.parameters(), lr=0.002)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=0.002,
        total_steps=steps,
        pct_start=0.25,
        div_factor=25.0,
        final_div_factor=1e4,
        cycle_momentum=False,
    )
    return opt, sched


def train_split(root: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The package's 55,000 training images (uint8) and labels, and their indices in the 60,000."""
    from torchvision.datasets import MNIST

    from mnist_lit.data import split_indices

    ds = MNIST(str(root), train=True, download=False)
    train_idx, _ = split_indices(len(ds.targets), VAL_SIZE, SEED)
    return ds.data[train_idx], ds.targets[train_idx], train_idx


def timed_epoch(
    net: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], steps: int
) -> dict[str, float]:
    """Train over ``batches``; images/s over those after the first WARMUP, ended by a device sync."""
    opt, sched = optimizer_for(net, steps)
    net.train()
    images, t0, cpu0 = 0, None, 0.0
    for i, (x, y) in enumerate(batches):
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if i == WARMUP:
            sync()
            t0, cpu0 = time.perf_counter(), time.process_time()
        elif i > WARMUP:
            images += len(y)
    sync()
    seconds = time.perf_counter() - t0 if t0 is not None else float("nan")
    cpu = time.process_time() - cpu0 if t0 is not None else float("nan")
    return {
        "images": images,
        "seconds": round(seconds, 4),
        "images_per_s": round(images / seconds, 1),
        "images_per_cpu_s": round(images / cpu, 1),
    }


def plain_in_memory(
    model: str,
    batch: int,
    data: tuple[torch.Tensor, torch.Tensor],
    max_batches: int | None,
    channels_last: bool = False,
) -> dict[str, float]:
    """A hand-written loop over tensors in memory: shuffle, gather, normalise, step.

    Images are gathered and normalised ``GATHER`` batches at a time, then split into batches: on
    this CPU that runs twoconv at batch 64 10-20% faster than gathering each batch on its own, so
    the loop the package is compared with is the faster of the two (the package's data module
    serves ``steps_per_call`` batches at once the same way).
    ``channels_last``: network and images in NHWC, as the package's ``channels_last=true`` runs.
    """
    torch.manual_seed(SEED)
    dev = device()
    x_all, y_all = data[0].to(dev), data[1].to(dev)
    net = build(model).to(dev)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=layout)
    n = len(y_all)
    steps = -(-n // batch) if max_batches is None else min(max_batches, -(-n // batch))

    def batches() -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        perm = torch.randperm(n, device=dev)[: steps * batch]
        for idx in perm.split(GATHER * batch):
            xs = ((x_all[idx].float() / 255.0 - MEAN) / STD).unsqueeze(1)
            for x, y in zip(xs.split(batch), y_all[idx].split(batch), strict=True):
                yield x.contiguous(memory_format=layout), y

    return timed_epoch(net, batches(), steps)


def bare_lightning(
    model: str, batch: int, data: tuple[torch.Tensor, torch.Tensor], max_batches: int | None
) -> dict[str, float]:
    """The floor under any Lightning package: a LightningModule doing only forward and loss.

    No logger, callbacks, metrics, progress bar or checkpoints; the same batches, optimizer and
    schedule as the plain loop. Its ratio to the plain loop is what Lightning's training loop
    itself costs per step on this machine, whatever a package built on it does.
    """
    import lightning as L

    from mnist_lit.sampling import ResumableLoader

    torch.manual_seed(SEED)
    x_all, y_all = data
    n = len(y_all)
    steps = -(-n // batch) if max_batches is None else min(max_batches, -(-n // batch))
    stamps: dict[str, float] = {}

    class Bare(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = build(model)

        def training_step(self, b: tuple[torch.Tensor, torch.Tensor], i: int) -> torch.Tensor:
            if i == WARMUP:
                sync()
                stamps["t0"], stamps["cpu0"] = time.perf_counter(), time.process_time()
            x = ((b[0].float() / 255.0 - MEAN) / STD).unsqueeze(1)
            return F.cross_entropy(self.net(x), b[1])

        def on_train_epoch_end(self) -> None:
            sync()
            stamps["t1"], stamps["cpu1"] = time.perf_counter(), time.process_time()

        def configure_optimizers(self) -> dict[str, Any]:
            opt, sched = optimizer_for(self.net, steps)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=steps,
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Bare(), ResumableLoader(x_all, y_all, batch, False, SEED))
    # the first WARMUP batches are left out; the stamp at WARMUP is taken before that batch runs
    images = min(n, steps * batch) - WARMUP * batch
    seconds = stamps["t1"] - stamps["t0"]
    return {
        "images_per_s": round(images / seconds, 1),
        "images_per_cpu_s": round(images / (stamps["cpu1"] - stamps["cpu0"]), 1),
    }


def bare_in_fresh_process(ctx: dict[str, Any], model: str, batch: int, cap: int | None) -> dict[str, float]:
    """``bare_lightning`` in its own process, started like the package's runs are."""
    cmd = [sys.executable, __file__, "--bare", model, str(batch), str(cap or 0)]
    cmd += ["--threads", str(ctx["threads"]), "--data-root", str(ctx["root"])]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"bare Lightning run failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def plain_torchvision(
    model: str, batch: int, root: Path, train_idx: torch.Tensor, max_batches: int | None
) -> dict[str, float]:
    """The seed reports' pipeline: torchvision MNIST, per-sample ToTensor + Normalize, a DataLoader."""
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    torch.manual_seed(SEED)
    dev = device()
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])
    ds = Subset(datasets.MNIST(str(root), train=True, download=False, transform=tf), train_idx.tolist())
    loader = DataLoader(ds, batch_size=batch, shuffle=True, pin_memory=dev.type == "cuda")
    net = build(model).to(dev)
    steps = len(loader) if max_batches is None else min(max_batches, len(loader))

    def batches() -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        for i, (x, y) in enumerate(loader):
            if i >= steps:
                return
            yield x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)

    return timed_epoch(net, batches(), steps)


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
    args: list[str], cwd: Path, root: Path, name: str, timeout: float = 1800
) -> tuple[dict[str, Any], float, float, float | None]:
    """A package run into cwd/name, as a user starts it.

    Returns its metrics.json, the whole-process wall seconds (shell to exit), the start time
    (``time.time()``), and the seconds from the shell to the first printed line that shows the
    test accuracy (None if none did): the process's output is read as it comes.
    """
    run_dir = cwd / name
    env = user_env(root)
    cmd = [sys.executable, "-m", "mnist_lit", *args, *PACKAGE_OVERRIDES, f"hydra.run.dir={run_dir}"]
    started = time.time()
    t0 = time.perf_counter()
    printed = None
    lines: list[str] = []
    with subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
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


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


# ---- legs ------------------------------------------------------------------------------------------------
def leg_overhead(
    ctx: dict[str, Any], models: list[str], batches: list[int], limit: int | None
) -> list[dict[str, Any]]:
    """Per model and batch size: the package (a fresh process) and then the plain loop.

    twoconv trains a full epoch; resnet (about 15x the compute per image) the first
    ``resnet_batches`` batches of one, so the whole bench stays within minutes on two cores.
    """
    cases = [(model, batch, False, None) for model in models for batch in batches]
    if limit is None:
        # twoconv at 128 for the FLOP/s leg's best batch size (the targets are at 64 and 32), at
        # 64 in channels_last, the layout this CPU runs twoconv's convolutions fastest in, and at 32
        # with one batch per Lightning training step (steps_per_call=1) instead of the default's 16
        cases[len(batches) : len(batches)] = [
            ("twoconv", 128, False, None),
            ("twoconv", 64, True, None),
            ("twoconv", 32, False, 1),
        ]
    rows = []
    for model, batch, channels_last, per_call in cases:
        cap = limit if limit is not None else (ctx["resnet_batches"] if model == "resnet" else None)
        args = [
            f"model={model}",
            "optim=adam",
            "sched=onecycle",
            f"data.batch_size={batch}",
            "trainer.max_epochs=1",
            f"threads={ctx['threads']}",
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
        timings, plains = [], []
        for repeat in range(ctx["repeats"]):
            metrics, wall, started, _ = package_run(args, ctx["tmp"], ctx["root"], f"{name}_{repeat}")
            timings.append(metrics["timing"])
            if repeat == 0:
                first = (metrics, wall, started)
            plains.append(plain_in_memory(model, batch, ctx["data"], cap, channels_last))
        metrics, wall, started = first
        pkg = max(t["train_images_per_s"] for t in timings)
        pkg_cpu = max(t.get("train_images_per_cpu_s") or 0 for t in timings) or None
        plain = {k: max(p[k] for p in plains) for k in ("images_per_s", "images_per_cpu_s")}
        plain_layout = model != "twoconv" or channels_last or per_call is not None
        bare = None if plain_layout else bare_in_fresh_process(ctx, model, batch, cap)
        rows.append(
            {
                "model": model,
                "batch": batch,
                "channels_last": channels_last,
                # optimizer steps per Lightning training step, as the run resolved steps_per_call
                "steps_per_call": metrics.get("steps_per_call"),
                "default_steps_per_call": per_call is None,
                "train_batches": cap or "epoch",
                "package_images_per_s": pkg,
                "plain_images_per_s": plain["images_per_s"],
                "ratio": ratio(pkg, plain["images_per_s"]),
                "target": 0.95 if per_call is None and not channels_last and batch in (32, 64) else None,
                # per CPU-second: the same ratio, far less disturbed by other programs on the cores
                "package_images_per_cpu_s": pkg_cpu,
                "plain_images_per_cpu_s": plain["images_per_cpu_s"],
                "cpu_ratio": ratio(pkg_cpu, plain["images_per_cpu_s"]),
                "package_runs_images_per_s": [t["train_images_per_s"] for t in timings],
                "plain_runs_images_per_s": [p["images_per_s"] for p in plains],
                # Lightning's own loop, nothing else, against the same plain loop
                "bare_lightning_images_per_s": bare and bare["images_per_s"],
                "bare_lightning_ratio": bare and ratio(bare["images_per_s"], plain["images_per_s"]),
                "package_wall_s": round(wall, 2),
                "first_step_s": round(metrics["timing"]["first_step_at"] - started, 2),
            }
        )
        print(f"  overhead {name}: {rows[-1]}", flush=True)
    return rows


def twoconv_row(
    overhead: list[dict[str, Any]], batch: int, channels_last: bool = False
) -> dict[str, Any] | None:
    rows = [
        r
        for r in overhead
        if r["model"] == "twoconv" and r["batch"] == batch and r.get("default_steps_per_call", True)
    ]
    return next((r for r in rows if r["channels_last"] == channels_last), None)


def leg_seeds(ctx: dict[str, Any], overhead: list[dict[str, Any]], limit: int | None) -> dict[str, Any]:
    """The package at batch 64 (default layout, and channels_last when measured) / the reports' loop."""
    row = twoconv_row(overhead, 64)
    cl = twoconv_row(overhead, 64, channels_last=True)
    # the best of as many runs as the package's throughput is the best of
    root, train_idx = ctx["root"], ctx["train_idx"]
    runs = [plain_torchvision("twoconv", 64, root, train_idx, limit) for _ in range(ctx["repeats"])]
    seeds = max(runs, key=lambda r: r["images_per_s"])
    out = {
        "model": "twoconv",
        "batch": 64,
        "package_images_per_s": row["package_images_per_s"],
        "torchvision_loop_images_per_s": seeds["images_per_s"],
        "ratio": ratio(row["package_images_per_s"], seeds["images_per_s"]),
        "target": 2.0,
        "channels_last_package_images_per_s": cl and cl["package_images_per_s"],
        "channels_last_ratio": cl and ratio(cl["package_images_per_s"], seeds["images_per_s"]),
    }
    print(f"  seeds: {out}", flush=True)
    return out


def leg_time_to_99(ctx: dict[str, Any], quick: bool) -> dict[str, Any]:
    """fast's whole process vs examplesnet's recipe run until its first epoch at val/acc >= 99%.

    Both are whole processes, timed from the shell to the printed test accuracy (and to exit).
    The recipe's leg stops at the first epoch whose validation accuracy reaches 99% (Lightning's
    EarlyStopping stopping_threshold), capped at ``examples_epochs`` epochs to stay affordable
    (on 55,000 training images it got there in its 5th epoch here). If the cap stops it first,
    ``examplesnet_reached_99`` says false and its time is a lower bound.
    """
    tiny = QUICK_LIMITS if quick else []
    threads = f"threads={ctx['threads']}"
    fast, fast_wall, _, fast_printed = package_run(
        ["experiment=fast", threads, "accelerator=auto", *tiny], ctx["tmp"], ctx["root"], "fast"
    )
    from omegaconf import OmegaConf

    fast_cfg = OmegaConf.load(ctx["tmp"] / "fast" / ".hydra" / "config.yaml")
    ctx["fast_run"] = {
        "images_per_s": fast["timing"]["train_images_per_s"],
        "batch": int(fast_cfg.data.batch_size),
        "channels_last": bool(fast_cfg.channels_last),
    }
    cap = 1 if quick else ctx["examples_epochs"]
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
    ex, ex_wall, _, ex_printed = package_run(ex_args, ctx["tmp"], ctx["root"], "examplesnet")
    reached = (ex.get("val/acc_best") or 0) >= THRESHOLD
    # training seconds per epoch of its 55,000 images (timed after warm-up, scaled to the epoch)
    epoch_s = [e["seconds"] * 55_000 / e["images"] for e in ex["timing"]["train_epochs"]]
    hand = ctx.get("hand_twoconv_epoch_s")
    # the measure: shell to the printed test accuracy; the process then still takes about
    # a second to exit (Python unloading torch and Lightning), kept in *_exit_s
    fast_s = fast_printed or fast_wall
    ex_s = ex_printed or ex_wall
    out = {
        "fast_wall_s": round(fast_s, 2),
        "fast_exit_s": round(fast_wall, 2),
        "fast_test_acc": fast.get("test/acc"),
        "fast_epochs": fast["epochs"],
        "fast_reached_99": (fast.get("test/acc") or 0) >= THRESHOLD,
        "examplesnet_wall_s": round(ex_s, 2),
        "examplesnet_exit_s": round(ex_wall, 2),
        "examplesnet_epochs": ex["epochs"],
        "examplesnet_epoch_cap": cap,
        "examplesnet_epoch_s": [round(t, 2) for t in epoch_s],
        "examplesnet_val_acc_best": ex.get("val/acc_best"),
        "examplesnet_test_acc": ex.get("test/acc"),
        "examplesnet_reached_99": reached,
        "speedup": ratio(ex_s, fast_s),
        "target_speedup": 15.0,
        "hand_twoconv_epoch_s": hand,
        "fast_over_3_hand_epochs": ratio(fast_s, 3 * hand) if hand else None,
        "target_fast_over_3_hand_epochs": 1.0,
    }
    print(f"  time_to_99: {out}", flush=True)
    return out


def leg_side_by_side(ctx: dict[str, Any], quick: bool) -> dict[str, Any]:
    """Two default runs started together by hand, against one alone, in this bench run.

    Each run chooses its torch threads from the cores other programs leave free (mnist_lit/threads.py).
    For contrast, the same with ``threads=2`` fixed: every run on every core, as torch does by default.
    Rates are each run's own training throughput (metrics.json), one epoch each.
    """
    args = ["trainer.max_epochs=1", "trainer.enable_progress_bar=false", *(QUICK_LIMITS if quick else [])]

    def rate(metrics: dict[str, Any]) -> float:
        return float(metrics["timing"]["train_images_per_s"])

    def alone(name: str, extra: list[str]) -> float:
        return max(
            rate(package_run([*args, *extra], ctx["tmp"], ctx["root"], f"{name}_{i}")[0])
            for i in range(ctx["repeats"])
        )

    def together(name: str, extra: list[str]) -> list[float]:
        found: dict[int, float] = {}

        def one(i: int) -> None:
            found[i] = rate(package_run([*args, *extra], ctx["tmp"], ctx["root"], f"{name}_{i}")[0])

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
    return {
        "solo_images_per_s": round(solo, 1),
        "pair_images_per_s": [round(r, 1) for r in pair],
        "pair_over_solo": [ratio(r, solo) for r in pair],
        "target_pair_over_solo": 0.4,
        "fixed_solo_images_per_s": round(fixed_solo, 1),
        "fixed_pair_images_per_s": [round(r, 1) for r in fixed_pair],
        "fixed_pair_over_solo": [ratio(r, fixed_solo) for r in fixed_pair],
        "solo_over_fixed_solo": ratio(solo, fixed_solo),
        "target_solo_over_fixed_solo": 0.97,
    }


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


def leg_flops(ctx: dict[str, Any], overhead: list[dict[str, Any]], quick: bool) -> dict[str, Any]:
    """Achieved training FLOP/s over a large matmul's: the default run's best batch, and fast's settings.

    experiment=fast is where the cheap raises live (batch 256, channels_last); its throughput
    comes from its own metrics.json, timed like every other package run.
    """
    rows = [r for r in overhead if r["model"] == "twoconv" and not r["channels_last"]]
    best = max(rows, key=lambda r: r["package_images_per_s"])
    per_image = train_step_flops("twoconv", best["batch"]) / best["batch"]
    achieved = per_image * best["package_images_per_s"]
    peak = matmul_flops(1024 if quick else 2048, 0.5 if quick else 3.0)
    fast = ctx.get("fast_run", {})
    fast_rate = fast.get("images_per_s")
    fast_batch = fast.get("batch")
    fast_achieved = (
        train_step_flops("twoconv", fast_batch) / fast_batch * fast_rate if fast_rate and fast_batch else None
    )
    out = {
        "model": "twoconv",
        "best_batch": best["batch"],
        "train_flop_per_image": int(per_image),
        "achieved_flop_per_s": round(achieved),
        "matmul_flop_per_s": round(peak),
        "fraction_of_matmul": round(achieved / peak, 4),
        "fast_batch": fast_batch,
        "fast_channels_last": fast.get("channels_last"),
        "fast_images_per_s": fast_rate,
        "fast_achieved_flop_per_s": round(fast_achieved) if fast_achieved else None,
        "fast_fraction_of_matmul": round(fast_achieved / peak, 4) if fast_achieved else None,
    }
    print(f"  flops: {out}", flush=True)
    return out


def heavy_imports(args: list[str], cwd: Path, root: Path) -> tuple[list[str], int, float]:
    """Which of torch / lightning ``python -m mnist_lit ARGS`` imported (by -X importtime); exit, seconds."""
    proc, wall, _ = cli(args, cwd, root, timeout=120, python_flags=["-X", "importtime"])
    names = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    heavy = sorted(n for n in ("torch", "lightning", "pytorch_lightning") if n in names)
    return heavy, proc.returncode, wall


def leg_startup(ctx: dict[str, Any], overhead: list[dict[str, Any]], repeats: int) -> dict[str, Any]:
    """Best of ``repeats`` wall times per case (0: the import-checking run's own time, slightly slower)."""
    cases = {
        "help": ["--help"],
        "cfg_job": ["--cfg", "job"],
        "config_error": ["data.batch_size=0"],
    }
    out: dict[str, Any] = {}
    for name, args in cases.items():
        heavy, code, wall = heavy_imports(args, ctx["tmp"], ctx["root"])
        times = [cli(args, ctx["tmp"], ctx["root"], timeout=120)[1] for _ in range(repeats)] or [wall]
        out[name] = {
            "seconds": round(min(times), 3),
            "exit_code": code,
            "expected_exit_code": 2 if name == "config_error" else 0,
            "heavy_imports": heavy,
            "target_s": 1.5,
        }
    out["first_training_step_s"] = min(r["first_step_s"] for r in overhead)
    print(f"  startup: {out}", flush=True)
    return out


# ---- report ----------------------------------------------------------------------------------------------
def table(res: dict[str, Any]) -> str:
    lines = [
        f"mnist_lit bench on {res['machine']['device']}, {res['machine']['threads']} threads"
        + (" (quick: a few batches per leg, numbers not meaningful)" if res["quick"] else ""),
        "",
        "| leg | case | package | baseline | ratio | target | ratio per CPU-second "
        "| bare Lightning / plain |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in res["overhead"]:
        lines.append(
            f"| overhead | {r['model']} batch {r['batch']}{', channels_last' if r['channels_last'] else ''} "
            f"({r['train_batches']}, {r['steps_per_call']} per call) "
            f"| {r['package_images_per_s']:,.0f} img/s "
            f"| plain loop {r['plain_images_per_s']:,.0f} img/s | {r['ratio']} "
            f"| {'>= ' + str(r['target']) if r['target'] else ''} "
            f"| {r['cpu_ratio']} | {r.get('bare_lightning_ratio') or ''} |"
        )
    s = res["seeds"]
    lines.append(
        f"| seeds pipeline | twoconv batch 64 | {s['package_images_per_s']:,.0f} img/s "
        f"| torchvision+DataLoader {s['torchvision_loop_images_per_s']:,.0f} img/s | {s['ratio']} "
        f"| >= {s['target']} |"
    )
    if s.get("channels_last_ratio"):
        lines.append(
            f"| seeds pipeline | twoconv batch 64, package in channels_last "
            f"| {s['channels_last_package_images_per_s']:,.0f} img/s "
            f"| torchvision+DataLoader {s['torchvision_loop_images_per_s']:,.0f} img/s "
            f"| {s['channels_last_ratio']} | >= {s['target']} |"
        )
    t = res["time_to_99"]
    lines.append(
        f"| time to 99% (shell to printed test acc) | experiment=fast vs examplesnet | {t['fast_wall_s']} s "
        f"(test {t['fast_test_acc']:.4f}, {t['fast_epochs']} ep) | {t['examplesnet_wall_s']} s "
        f"({t['examplesnet_epochs']} ep, val {t['examplesnet_val_acc_best']:.4f}) | {t['speedup']}x "
        f"| >= {t['target_speedup']}x |"
    )
    lines.append(
        f"| time to 99% (shell to process exit) | experiment=fast vs examplesnet | {t['fast_exit_s']} s "
        f"| {t['examplesnet_exit_s']} s | {ratio(t['examplesnet_exit_s'], t['fast_exit_s'])}x | |"
    )
    if t["hand_twoconv_epoch_s"]:
        lines.append(
            f"| time to 99% | fast vs 3 hand-loop twoconv epochs | {t['fast_wall_s']} s "
            f"| {3 * t['hand_twoconv_epoch_s']:.2f} s | {t['fast_over_3_hand_epochs']} | <= 1.0 |"
        )
    sb = res.get("side_by_side")
    if sb:
        pair = " and ".join(f"{r:,.0f}" for r in sb["pair_images_per_s"])
        fixed = " and ".join(f"{r:,.0f}" for r in sb["fixed_pair_images_per_s"])
        lines.append(
            f"| side by side | two default runs started together, each vs one alone | {pair} img/s "
            f"| alone {sb['solo_images_per_s']:,.0f} img/s | {min(sb['pair_over_solo'])} (lower of the two) "
            f"| >= {sb['target_pair_over_solo']} |"
        )
        lines.append(
            f"| side by side | the same with threads=2 fixed (torch's default) | {fixed} img/s "
            f"| alone {sb['fixed_solo_images_per_s']:,.0f} img/s "
            f"| {min(sb['fixed_pair_over_solo'])} | contrast |"
        )
        lines.append(
            f"| side by side | one run alone: threads chosen vs threads=2 "
            f"| {sb['solo_images_per_s']:,.0f} img/s "
            f"| {sb['fixed_solo_images_per_s']:,.0f} img/s | {sb['solo_over_fixed_solo']} "
            f"| >= {sb['target_solo_over_fixed_solo']} |"
        )
    f = res["flops"]
    lines.append(
        f"| FLOP/s | twoconv batch {f['best_batch']} training | {f['achieved_flop_per_s'] / 1e9:.2f} GFLOP/s "
        f"| matmul {f['matmul_flop_per_s'] / 1e9:.1f} GFLOP/s | {f['fraction_of_matmul']} | report |"
    )
    if f.get("fast_achieved_flop_per_s"):
        layout = ", channels_last" if f["fast_channels_last"] else ""
        lines.append(
            f"| FLOP/s | twoconv experiment=fast (batch {f['fast_batch']}{layout}) "
            f"| {f['fast_achieved_flop_per_s'] / 1e9:.2f} GFLOP/s "
            f"| matmul {f['matmul_flop_per_s'] / 1e9:.1f} GFLOP/s | {f['fast_fraction_of_matmul']} | report |"
        )
    st = res["startup"]
    for name in ("help", "cfg_job", "config_error"):
        c = st[name]
        heavy = ", ".join(c["heavy_imports"]) or "no torch/lightning"
        lines.append(
            f"| start-up | {name} (exit {c['exit_code']}) | {c['seconds']} s | {heavy} | "
            f"| < {c['target_s']} s |"
        )
    first = st["first_training_step_s"]
    lines.append(f"| start-up | process start to first training step | {first} s | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: every leg, a few batches")
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
        "--repeats", type=int, default=2, help="overhead leg: package and plain runs per case (best kept)"
    )
    p.add_argument("--examples-epochs", type=int, default=6, help="cap on examplesnet's epochs to 99%%")
    p.add_argument("--bare", nargs=3, metavar=("MODEL", "BATCH", "BATCHES"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.out is None:
        a.out = REPO / ("outputs/bench/quick.json" if a.quick else "bench/results.json")
    if not (a.data_root / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        print(f"error: no MNIST/raw/ under --data-root {a.data_root} (or MNIST_ROOT)", file=sys.stderr)
        return 2
    torch.set_num_threads(a.threads)
    PACKAGE_OVERRIDES[:] = a.override
    x, y, train_idx = train_split(a.data_root)
    # importing mnist_lit (above) imported Lightning, which makes torch ask NVML whether CUDA is
    # there at every optimizer step (~40 us each on a machine without a GPU); a hand-written script
    # never imports Lightning, and the package lifts it on accelerator=cpu runs as well
    os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
    if a.bare:  # one bare-Lightning measurement, for bare_in_fresh_process: JSON on the last line
        model, batch, batches = a.bare[0], int(a.bare[1]), int(a.bare[2]) or None
        print(json.dumps(bare_lightning(model, batch, (x, y), batches)))
        return 0
    limit = QUICK_BATCHES if a.quick else None
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mnist_lit_bench_") as tmp:
        ctx: dict[str, Any] = {
            "tmp": Path(tmp),
            "root": a.data_root.resolve(),
            "threads": a.threads,
            "data": (x, y),
            "train_idx": train_idx,
            "examples_epochs": a.examples_epochs,
            "resnet_batches": a.resnet_batches,
            "repeats": 1 if a.quick else max(1, a.repeats),
        }
        models = ["twoconv"] if a.quick else ["twoconv", "resnet"]
        batches = [64] if a.quick else [64, 32]
        overhead = leg_overhead(ctx, models, batches, limit)
        hand = twoconv_row(overhead, 64)
        ctx["hand_twoconv_epoch_s"] = round(len(y) / hand["plain_images_per_s"], 2)
        res: dict[str, Any] = {
            "quick": a.quick,
            "machine": {
                "device": machine_name(),
                "threads": a.threads,
                "package_overrides": a.override,
                "cpus": os.cpu_count(),
                "torch": torch.__version__,
                "python": platform.python_version(),
            },
            "overhead": overhead,
            "seeds": leg_seeds(ctx, overhead, limit),
            "time_to_99": leg_time_to_99(ctx, a.quick),
            "side_by_side": leg_side_by_side(ctx, a.quick),
            "flops": leg_flops(ctx, overhead, a.quick),
            "startup": leg_startup(ctx, overhead, 0 if a.quick else 3),
        }
    res["bench_seconds"] = round(time.perf_counter() - started, 1)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    print()
    print(table(res))
    print(f"\nbench took {res['bench_seconds']} s; JSON: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
