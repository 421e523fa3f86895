"""The bench's targets, its typed results (one small dataclass per leg) and the table they print as.

The JSON (bench/results.json) is ``to_json(result)``: dataclasses.asdict, with the keys every
earlier results file has, so ``from_json`` reads those files too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


# ---- targets: the only place each one is written ---------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """A bound on a measured value: ``value OP bound`` passes. ``unit`` is only for printing."""

    op: str  # ">=", "<=" or "<"
    bound: float
    unit: str = ""

    @property
    def text(self) -> str:
        return f"{self.op} {self.bound}{self.unit}"

    def met(self, value: float | None) -> bool | None:
        """Whether ``value`` meets the target; None when there is no value to judge."""
        if value is None:
            return None
        return {">=": value >= self.bound, "<=": value <= self.bound, "<": value < self.bound}[self.op]


TARGETS: dict[str, Target] = {
    # package / plain in-memory loop, images/s; default layout and steps_per_call, batch 64 and 32
    "overhead": Target(">=", 0.95),
    # package / torchvision MNIST + ToTensor + Normalize + DataLoader loop, twoconv batch 64
    "seeds": Target(">=", 2.0),
    # examplesnet's time to 99% / experiment=fast's, shell to printed test accuracy
    "time_to_99": Target(">=", 15.0, "x"),
    # experiment=fast's time to 99% / two epochs of the plain twoconv loop at batch 64
    "fast_over_2_hand_epochs": Target("<=", 1.0),
    # each of two default runs started together / one alone (the lower of the two is judged)
    "pair_over_solo": Target(">=", 0.4),
    # one default run alone, threads chosen by the run / threads=2
    "solo_over_fixed_solo": Target(">=", 0.97),
    # --help, --cfg job and a config error, whole process
    "startup": Target("<", 1.5, " s"),
    # the default run at steps_per_call=16 / at steps_per_call=1, training images/s
    "steps_per_call": Target(">=", 1.1),
}

OVERHEAD_TARGET_BATCHES = (32, 64)


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


# ---- typed results, one per leg --------------------------------------------------------------------------
@dataclass
class Machine:
    device: str
    threads: int
    package_overrides: list[str]
    cpus: int | None
    torch: str
    python: str


@dataclass
class OverheadRow:
    """One overhead case: the package (a fresh process) against the plain in-memory loop."""

    model: str
    batch: int
    channels_last: bool
    # optimizer steps per Lightning training step, as the run resolved steps_per_call
    steps_per_call: int | None
    default_steps_per_call: bool
    train_batches: int | str  # "epoch" or the batches timed
    package_images_per_s: float
    plain_images_per_s: float
    ratio: float | None
    target: float | None
    # per CPU-second: the same ratio, far less disturbed by other programs on the cores
    package_images_per_cpu_s: float | None
    plain_images_per_cpu_s: float
    cpu_ratio: float | None
    package_runs_images_per_s: list[float]
    plain_runs_images_per_s: list[float]
    # Lightning's own loop, nothing else, against the same plain loop
    bare_lightning_images_per_s: float | None
    bare_lightning_ratio: float | None
    package_wall_s: float
    first_step_s: float


@dataclass
class Seeds:
    model: str
    batch: int
    package_images_per_s: float
    torchvision_loop_images_per_s: float
    ratio: float | None
    target: float
    channels_last_package_images_per_s: float | None
    channels_last_ratio: float | None


@dataclass
class TimeTo99:
    fast_wall_s: float
    fast_exit_s: float
    fast_test_acc: float | None
    fast_epochs: int
    fast_reached_99: bool
    examplesnet_wall_s: float
    examplesnet_exit_s: float
    examplesnet_epochs: int
    examplesnet_epoch_cap: int
    examplesnet_epoch_s: list[float]
    examplesnet_val_acc_best: float | None
    examplesnet_test_acc: float | None
    examplesnet_reached_99: bool
    speedup: float | None
    target_speedup: float
    hand_twoconv_epoch_s: float | None
    fast_over_2_hand_epochs: float | None
    target_fast_over_2_hand_epochs: float


@dataclass
class SideBySide:
    solo_images_per_s: float
    pair_images_per_s: list[float]
    pair_over_solo: list[float | None]
    target_pair_over_solo: float
    fixed_solo_images_per_s: float
    fixed_pair_images_per_s: list[float]
    fixed_pair_over_solo: list[float | None]
    solo_over_fixed_solo: float | None
    target_solo_over_fixed_solo: float


@dataclass
class Flops:
    model: str
    best_batch: int
    train_flop_per_image: int
    achieved_flop_per_s: int
    matmul_flop_per_s: int
    fraction_of_matmul: float
    fast_batch: int | None
    fast_channels_last: bool | None
    fast_images_per_s: float | None
    fast_achieved_flop_per_s: int | None
    fast_fraction_of_matmul: float | None


@dataclass
class StartupCase:
    seconds: float
    exit_code: int
    expected_exit_code: int
    heavy_imports: list[str]
    target_s: float


@dataclass
class Startup:
    help: StartupCase
    cfg_job: StartupCase
    config_error: StartupCase
    # None when the overhead leg (whose runs it is read from) did not run
    first_training_step_s: float | None

    def cases(self) -> dict[str, StartupCase]:
        return {"help": self.help, "cfg_job": self.cfg_job, "config_error": self.config_error}


@dataclass
class SpcSide:
    """The default run at one steps_per_call: best of its runs, and every run."""

    steps_per_call: int  # as the run resolved it (metrics.json)
    images_per_s: float  # the best run's training throughput (metrics.json timing)
    wall_s: float  # the fastest run's whole process, shell to exit
    runs_images_per_s: list[float]
    runs_wall_s: list[float]


@dataclass
class StepsPerCall:
    """The default run (python -m mnist_lit, default config) at steps_per_call=16 against =1."""

    model: str
    batch: int
    epochs: int
    train_batches: int | str  # "epoch" or the quick limit
    many: SpcSide
    one: SpcSide
    ratio: float | None  # many.images_per_s / one.images_per_s
    target: float
    wall_ratio: float | None  # one.wall_s / many.wall_s


@dataclass
class BenchResult:
    """One bench run; a leg not run (``--legs``) is None and left out of the JSON."""

    quick: bool
    machine: Machine
    overhead: list[OverheadRow] | None = None
    seeds: Seeds | None = None
    time_to_99: TimeTo99 | None = None
    side_by_side: SideBySide | None = None
    flops: Flops | None = None
    startup: Startup | None = None
    steps_per_call: StepsPerCall | None = None
    bench_seconds: float | None = None


def to_json(res: BenchResult) -> dict[str, Any]:
    return {k: v for k, v in asdict(res).items() if v is not None}


def from_json(d: dict[str, Any]) -> BenchResult:
    """A results JSON (this version's or an earlier one: without steps_per_call, or with time_to_99
    against three hand-loop epochs, recomputed against two from the same measured times) as typed
    results."""

    def opt(key: str, make: Any) -> Any:
        return make(d[key]) if d.get(key) is not None else None

    def spc(s: dict[str, Any]) -> StepsPerCall:
        return StepsPerCall(**{**s, "many": SpcSide(**s["many"]), "one": SpcSide(**s["one"])})

    def time_to_99(s: dict[str, Any]) -> TimeTo99:
        s = dict(s)
        if "fast_over_3_hand_epochs" in s:  # written when the target was three hand-loop epochs
            del s["fast_over_3_hand_epochs"], s["target_fast_over_3_hand_epochs"]
            hand = s["hand_twoconv_epoch_s"]
            s["fast_over_2_hand_epochs"] = ratio(s["fast_wall_s"], 2 * hand) if hand else None
            s["target_fast_over_2_hand_epochs"] = TARGETS["fast_over_2_hand_epochs"].bound
        return TimeTo99(**s)

    def startup(s: dict[str, Any]) -> Startup:
        cases = {k: StartupCase(**s[k]) for k in ("help", "cfg_job", "config_error")}
        return Startup(**cases, first_training_step_s=s.get("first_training_step_s"))

    return BenchResult(
        quick=d["quick"],
        machine=Machine(**d["machine"]),
        overhead=opt("overhead", lambda rows: [OverheadRow(**r) for r in rows]),
        seeds=opt("seeds", lambda s: Seeds(**s)),
        time_to_99=opt("time_to_99", time_to_99),
        side_by_side=opt("side_by_side", lambda s: SideBySide(**s)),
        flops=opt("flops", lambda s: Flops(**s)),
        startup=opt("startup", startup),
        steps_per_call=opt("steps_per_call", spc),
        bench_seconds=d.get("bench_seconds"),
    )


# ---- the table -------------------------------------------------------------------------------------------
def judged(name: str, value: float | None) -> str:
    """The target cell: the target as TARGETS has it, then pass or miss for ``value``."""
    target = TARGETS[name]
    met = target.met(value)
    return target.text + ("" if met is None else " pass" if met else " miss")


def overhead_lines(rows: list[OverheadRow]) -> list[str]:
    lines = []
    for r in rows:
        layout = ", channels_last" if r.channels_last else ""
        lines.append(
            f"| overhead | {r.model} batch {r.batch}{layout} "
            f"({r.train_batches}, {r.steps_per_call} per call) "
            f"| {r.package_images_per_s:,.0f} img/s "
            f"| plain loop {r.plain_images_per_s:,.0f} img/s | {r.ratio} "
            f"| {judged('overhead', r.ratio) if r.target is not None else ''} "
            f"| {r.cpu_ratio} | {r.bare_lightning_ratio or ''} |"
        )
    return lines


def seeds_lines(s: Seeds) -> list[str]:
    lines = [
        f"| seeds pipeline | {s.model} batch {s.batch} | {s.package_images_per_s:,.0f} img/s "
        f"| torchvision+DataLoader {s.torchvision_loop_images_per_s:,.0f} img/s | {s.ratio} "
        f"| {judged('seeds', s.ratio)} |"
    ]
    if s.channels_last_ratio and s.channels_last_package_images_per_s:
        lines.append(
            f"| seeds pipeline | {s.model} batch {s.batch}, package in channels_last "
            f"| {s.channels_last_package_images_per_s:,.0f} img/s "
            f"| torchvision+DataLoader {s.torchvision_loop_images_per_s:,.0f} img/s "
            f"| {s.channels_last_ratio} | {judged('seeds', s.channels_last_ratio)} |"
        )
    return lines


def time_to_99_lines(t: TimeTo99) -> list[str]:
    test_acc = f"{t.fast_test_acc:.4f}" if t.fast_test_acc is not None else "none"
    val_acc = f"{t.examplesnet_val_acc_best:.4f}" if t.examplesnet_val_acc_best is not None else "none"
    lines = [
        f"| time to 99% (shell to printed test acc) | experiment=fast vs examplesnet | {t.fast_wall_s} s "
        f"(test {test_acc}, {t.fast_epochs} ep) | {t.examplesnet_wall_s} s "
        f"({t.examplesnet_epochs} ep, val {val_acc}) | {t.speedup}x "
        f"| {judged('time_to_99', t.speedup)} |",
        f"| time to 99% (shell to process exit) | experiment=fast vs examplesnet | {t.fast_exit_s} s "
        f"| {t.examplesnet_exit_s} s | {ratio(t.examplesnet_exit_s, t.fast_exit_s)}x | |",
    ]
    if t.hand_twoconv_epoch_s:
        lines.append(
            f"| time to 99% | fast vs 2 hand-loop twoconv epochs | {t.fast_wall_s} s "
            f"| {2 * t.hand_twoconv_epoch_s:.2f} s | {t.fast_over_2_hand_epochs} "
            f"| {judged('fast_over_2_hand_epochs', t.fast_over_2_hand_epochs)} |"
        )
    return lines


def side_by_side_lines(sb: SideBySide) -> list[str]:
    pair = " and ".join(f"{r:,.0f}" for r in sb.pair_images_per_s)
    fixed = " and ".join(f"{r:,.0f}" for r in sb.fixed_pair_images_per_s)
    lower = lowest(sb.pair_over_solo)
    return [
        f"| side by side | two default runs started together, each vs one alone | {pair} img/s "
        f"| alone {sb.solo_images_per_s:,.0f} img/s | {lower} (lower of the two) "
        f"| {judged('pair_over_solo', lower)} |",
        f"| side by side | the same with threads=2 fixed (torch's default) | {fixed} img/s "
        f"| alone {sb.fixed_solo_images_per_s:,.0f} img/s "
        f"| {lowest(sb.fixed_pair_over_solo)} | contrast |",
        f"| side by side | one run alone: threads chosen vs threads=2 "
        f"| {sb.solo_images_per_s:,.0f} img/s "
        f"| {sb.fixed_solo_images_per_s:,.0f} img/s | {sb.solo_over_fixed_solo} "
        f"| {judged('solo_over_fixed_solo', sb.solo_over_fixed_solo)} |",
    ]


def lowest(values: list[float | None]) -> float | None:
    """The lower of two runs' ratios; None when either has none."""
    known = [v for v in values if v is not None]
    return min(known) if known and len(known) == len(values) else None


def flops_lines(f: Flops) -> list[str]:
    lines = [
        f"| FLOP/s | {f.model} batch {f.best_batch} training | {f.achieved_flop_per_s / 1e9:.2f} GFLOP/s "
        f"| matmul {f.matmul_flop_per_s / 1e9:.1f} GFLOP/s | {f.fraction_of_matmul} | report |"
    ]
    if f.fast_achieved_flop_per_s:
        layout = ", channels_last" if f.fast_channels_last else ""
        lines.append(
            f"| FLOP/s | {f.model} experiment=fast (batch {f.fast_batch}{layout}) "
            f"| {f.fast_achieved_flop_per_s / 1e9:.2f} GFLOP/s "
            f"| matmul {f.matmul_flop_per_s / 1e9:.1f} GFLOP/s | {f.fast_fraction_of_matmul} | report |"
        )
    return lines


def startup_lines(st: Startup) -> list[str]:
    lines = []
    for name, c in st.cases().items():
        heavy = ", ".join(c.heavy_imports) or "no torch/lightning"
        lines.append(
            f"| start-up | {name} (exit {c.exit_code}) | {c.seconds} s | {heavy} | "
            f"| {judged('startup', c.seconds)} |"
        )
    if st.first_training_step_s is not None:
        first = st.first_training_step_s
        lines.append(f"| start-up | process start to first training step | {first} s | | | |")
    return lines


def steps_per_call_lines(s: StepsPerCall) -> list[str]:
    many, one = s.many, s.one
    return [
        f"| steps_per_call | default run: {s.model} batch {s.batch}, {s.epochs} ep ({s.train_batches}), "
        f"steps_per_call={many.steps_per_call} vs {one.steps_per_call} "
        f"| {many.images_per_s:,.0f} img/s, process {many.wall_s} s "
        f"| steps_per_call={one.steps_per_call} {one.images_per_s:,.0f} img/s, process {one.wall_s} s "
        f"| {s.ratio} | {judged('steps_per_call', s.ratio)} |"
    ]


def table(res: BenchResult) -> str:
    lines = [
        f"mnist_lit bench on {res.machine.device}, {res.machine.threads} threads"
        + (" (quick: a few batches per leg, numbers not meaningful)" if res.quick else ""),
        "",
        "| leg | case | package | baseline | ratio | target | ratio per CPU-second "
        "| bare Lightning / plain |",
        "|---|---|---|---|---|---|---|---|",
    ]
    if res.overhead is not None:
        lines += overhead_lines(res.overhead)
    if res.seeds is not None:
        lines += seeds_lines(res.seeds)
    if res.time_to_99 is not None:
        lines += time_to_99_lines(res.time_to_99)
    if res.side_by_side is not None:
        lines += side_by_side_lines(res.side_by_side)
    if res.flops is not None:
        lines += flops_lines(res.flops)
    if res.startup is not None:
        lines += startup_lines(res.startup)
    if res.steps_per_call is not None:
        lines += steps_per_call_lines(res.steps_per_call)
    return "\n".join(lines)
