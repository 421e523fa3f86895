"""The benchmark: its printed table against its JSON and its targets (no timing asserted).

The table is checked three ways with one checker (``check_table``): on a hand-made typed result,
on the committed bench/results.json (an earlier run: its keys still read), and on one quick run of
the legs QUICK_LEGS names (shared by this module's tests).
"""

from __future__ import annotations

import importlib.util
import json
import operator
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO

BENCH = REPO / "bench"
COMMITTED = BENCH / "results.json"
LEGS = {"overhead", "seeds", "time_to_99", "side_by_side", "flops", "startup", "steps_per_call"}
# the legs the suite's quick run measures: every kind of measurement (hand-written loops, package
# runs, whole processes, FLOP/s, start-up and its imports); side_by_side and steps_per_call only
# repeat package runs in other arrangements, and `make bench` runs them (also --quick)
QUICK_LEGS = ("overhead", "seeds", "time_to_99", "flops", "startup")


def load_report() -> Any:
    """bench/report.py under a name of its own (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_report", BENCH / "report.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_report"] = module  # dataclasses look their module up while being made
    spec.loader.exec_module(module)
    return module


report = load_report()
TARGETS = report.TARGETS
OPS = {">=": operator.ge, "<=": operator.le, "<": operator.lt}


# ---- the checker: every JSON result has its row, with its ratio and its judged target ----------------------
@dataclass
class Expected:
    leg: str
    case: str
    ratio: str  # the printed ratio cell
    target: str  # the printed target cell


def judged(name: str, value: float) -> str:
    """The target cell the printer must print for ``value``, worked out here, not by report.py."""
    t = TARGETS[name]
    return f"{t.op} {t.bound}{t.unit} " + ("pass" if OPS[t.op](value, t.bound) else "miss")


def close(ratio: float | None, a: float, b: float) -> bool:
    """``ratio`` is a/b, up to the rounding of a and b in the JSON and of the ratio itself."""
    return ratio is not None and abs(ratio - a / b) <= 2e-3 * abs(a / b) + 6e-4


def expected_rows(d: dict[str, Any]) -> list[Expected]:
    """The rows a results JSON must print as; asserts each ratio is package / baseline on the way."""
    rows: list[Expected] = []
    for r in d.get("overhead", []):
        assert r["ratio"] == round(r["package_images_per_s"] / r["plain_images_per_s"], 3), r
        if r["package_images_per_cpu_s"]:
            cpu = r["package_images_per_cpu_s"] / r["plain_images_per_cpu_s"]
            assert r["cpu_ratio"] == round(cpu, 3), r
        if r["bare_lightning_ratio"] is not None:
            bare = r["bare_lightning_images_per_s"] / r["plain_images_per_s"]
            assert r["bare_lightning_ratio"] == round(bare, 3), r
        targeted = r["default_steps_per_call"] and not r["channels_last"] and r["batch"] in (32, 64)
        assert r["target"] == (TARGETS["overhead"].bound if targeted else None), r
        layout = ", channels_last" if r["channels_last"] else ""
        per_call = f"({r['train_batches']}, {r['steps_per_call']} per call)"
        case = f"{r['model']} batch {r['batch']}{layout} {per_call}"
        target = judged("overhead", r["ratio"]) if targeted else ""
        rows.append(Expected("overhead", case, str(r["ratio"]), target))
    if "seeds" in d:
        s = d["seeds"]
        assert s["target"] == TARGETS["seeds"].bound
        assert s["ratio"] == round(s["package_images_per_s"] / s["torchvision_loop_images_per_s"], 3)
        target = judged("seeds", s["ratio"])
        rows.append(Expected("seeds pipeline", "twoconv batch 64", str(s["ratio"]), target))
        if s["channels_last_ratio"]:
            cl = s["channels_last_package_images_per_s"] / s["torchvision_loop_images_per_s"]
            assert s["channels_last_ratio"] == round(cl, 3)
            case = "twoconv batch 64, package in channels_last"
            target = judged("seeds", s["channels_last_ratio"])
            rows.append(Expected("seeds pipeline", case, str(s["channels_last_ratio"]), target))
    if "time_to_99" in d:
        t = d["time_to_99"]
        assert t["target_speedup"] == TARGETS["time_to_99"].bound
        # results written before the target became two hand-loop epochs print the ratio to two
        old = "fast_over_3_hand_epochs" in t
        bound = t["target_fast_over_3_hand_epochs" if old else "target_fast_over_2_hand_epochs"]
        assert bound == TARGETS["fast_over_2_hand_epochs"].bound
        assert close(t["speedup"], t["examplesnet_wall_s"], t["fast_wall_s"]), t
        case = "experiment=fast vs examplesnet"
        target = judged("time_to_99", t["speedup"])
        rows.append(Expected("time to 99% (shell to printed test acc)", case, f"{t['speedup']}x", target))
        exit_ratio = round(t["examplesnet_exit_s"] / t["fast_exit_s"], 3)
        rows.append(Expected("time to 99% (shell to process exit)", case, f"{exit_ratio}x", ""))
        if t["hand_twoconv_epoch_s"]:
            two = 2 * t["hand_twoconv_epoch_s"]
            value = round(t["fast_wall_s"] / two, 3) if old else t["fast_over_2_hand_epochs"]
            assert close(value, t["fast_wall_s"], two), t
            target = judged("fast_over_2_hand_epochs", value)
            rows.append(Expected("time to 99%", "fast vs 2 hand-loop twoconv epochs", str(value), target))
    if "side_by_side" in d:
        sb = d["side_by_side"]
        assert sb["target_pair_over_solo"] == TARGETS["pair_over_solo"].bound
        assert sb["target_solo_over_fixed_solo"] == TARGETS["solo_over_fixed_solo"].bound
        for pair, over, solo in (
            (sb["pair_images_per_s"], sb["pair_over_solo"], sb["solo_images_per_s"]),
            (sb["fixed_pair_images_per_s"], sb["fixed_pair_over_solo"], sb["fixed_solo_images_per_s"]),
        ):
            assert len(pair) == len(over) == 2
            assert all(close(o, r, solo) for o, r in zip(over, pair, strict=True)), sb
        assert close(sb["solo_over_fixed_solo"], sb["solo_images_per_s"], sb["fixed_solo_images_per_s"])
        lower = min(sb["pair_over_solo"])
        rows += [
            Expected(
                "side by side",
                "two default runs started together, each vs one alone",
                f"{lower} (lower of the two)",
                judged("pair_over_solo", lower),
            ),
            Expected(
                "side by side",
                "the same with threads=2 fixed (torch's default)",
                str(min(sb["fixed_pair_over_solo"])),
                "contrast",
            ),
            Expected(
                "side by side",
                "one run alone: threads chosen vs threads=2",
                str(sb["solo_over_fixed_solo"]),
                judged("solo_over_fixed_solo", sb["solo_over_fixed_solo"]),
            ),
        ]
    if "flops" in d:
        f = d["flops"]
        assert close(f["fraction_of_matmul"], f["achieved_flop_per_s"], f["matmul_flop_per_s"]), f
        case = f"twoconv batch {f['best_batch']} training"
        rows.append(Expected("FLOP/s", case, str(f["fraction_of_matmul"]), "report"))
        if f["fast_achieved_flop_per_s"]:
            assert close(f["fast_fraction_of_matmul"], f["fast_achieved_flop_per_s"], f["matmul_flop_per_s"])
            layout = ", channels_last" if f["fast_channels_last"] else ""
            case = f"twoconv experiment=fast (batch {f['fast_batch']}{layout})"
            rows.append(Expected("FLOP/s", case, str(f["fast_fraction_of_matmul"]), "report"))
    if "startup" in d:
        st = d["startup"]
        for name in ("help", "cfg_job", "config_error"):
            c = st[name]
            assert c["target_s"] == TARGETS["startup"].bound
            case = f"{name} (exit {c['exit_code']})"
            rows.append(Expected("start-up", case, "", judged("startup", c["seconds"])))
        if st["first_training_step_s"] is not None:
            rows.append(Expected("start-up", "process start to first training step", "", ""))
    if "steps_per_call" in d:
        s = d["steps_per_call"]
        many, one = s["many"], s["one"]
        assert s["target"] == TARGETS["steps_per_call"].bound
        assert (many["steps_per_call"], one["steps_per_call"]) == (16, 1)
        assert s["ratio"] == round(many["images_per_s"] / one["images_per_s"], 3)
        assert many["images_per_s"] == max(many["runs_images_per_s"]), many
        assert many["wall_s"] == min(many["runs_wall_s"]), many
        assert one["images_per_s"] == max(one["runs_images_per_s"]), one
        assert one["wall_s"] == min(one["runs_wall_s"]), one
        case = (
            f"default run: {s['model']} batch {s['batch']}, {s['epochs']} ep ({s['train_batches']}), "
            "steps_per_call=16 vs 1"
        )
        rows.append(Expected("steps_per_call", case, str(s["ratio"]), judged("steps_per_call", s["ratio"])))
    return rows


def printed_rows(text: str) -> list[list[str]]:
    """The table's body rows, as cells."""
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert lines and lines[0].startswith("| leg | case | package | baseline | ratio | target |"), text
    return [[c.strip() for c in line.strip()[1:-1].split("|")] for line in lines[1:]]


def check_table(text: str, d: dict[str, Any]) -> None:
    """Every result in ``d`` has exactly one row, no row is left over, and each row's ratio and
    target cells are the JSON's ratio and the target in TARGETS, marked pass or miss rightly."""
    rows = printed_rows(text)
    expected = expected_rows(d)
    assert len(rows) == len(expected), "\n".join(" | ".join(r) for r in rows)
    for e in expected:
        found = [r for r in rows if r[0] == e.leg and r[1] == e.case]
        assert len(found) == 1, (e, rows)
        assert found[0][4] == e.ratio, (e, found[0])
        assert found[0][5] == e.target, (e, found[0])
    # every target printed is one of the table's, marked
    texts = {t.text for t in TARGETS.values()}
    for r in rows:
        if r[5] not in ("", "report", "contrast"):
            bound, _, mark = r[5].rpartition(" ")
            assert bound in texts and mark in ("pass", "miss"), r


# ---- fast: the targets and the printer on hand-made typed results ------------------------------------------
def test_targets_judge_at_their_bounds() -> None:
    assert TARGETS["overhead"].met(0.95) and not TARGETS["overhead"].met(0.949)
    assert TARGETS["fast_over_2_hand_epochs"].met(1.0) and not TARGETS["fast_over_2_hand_epochs"].met(1.001)
    assert not TARGETS["startup"].met(1.5) and TARGETS["startup"].met(1.499)
    assert TARGETS["steps_per_call"].text == ">= 1.1" and TARGETS["steps_per_call"].met(1.1)
    assert TARGETS["time_to_99"].text == ">= 15.0x" and TARGETS["startup"].text == "< 1.5 s"
    assert TARGETS["overhead"].met(None) is None


def overhead_row(batch: int, package: float, plain: float, **kw: Any) -> Any:
    defaults = dict(
        model="twoconv",
        batch=batch,
        channels_last=False,
        steps_per_call=16,
        default_steps_per_call=True,
        train_batches="epoch",
        package_images_per_s=package,
        plain_images_per_s=plain,
        ratio=report.ratio(package, plain),
        target=0.95,
        package_images_per_cpu_s=package / 2,
        plain_images_per_cpu_s=plain / 2,
        cpu_ratio=report.ratio(package, plain),
        package_runs_images_per_s=[package],
        plain_runs_images_per_s=[plain],
        bare_lightning_images_per_s=None,
        bare_lightning_ratio=None,
        package_wall_s=12.0,
        first_step_s=4.5,
    )
    return report.OverheadRow(**{**defaults, **kw})


def hand_made() -> Any:
    """A full result with a pass and a miss of most targets, one exactly at its bound."""
    side = report.SpcSide
    case = report.StartupCase
    return report.BenchResult(
        quick=False,
        machine=report.Machine("a CPU", 2, [], 2, "2.x", "3.11"),
        overhead=[
            overhead_row(64, 9500.0, 10000.0),  # exactly at >= 0.95: pass
            overhead_row(32, 7000.0, 10000.0, bare_lightning_images_per_s=6500.0, bare_lightning_ratio=0.65),
            overhead_row(64, 16000.0, 15000.0, channels_last=True, target=None),
            overhead_row(32, 7000.0, 9000.0, steps_per_call=1, default_steps_per_call=False, target=None),
            overhead_row(64, 1100.0, 1000.0, model="resnet", train_batches=300),
        ],
        seeds=report.Seeds("twoconv", 64, 9500.0, 5000.0, 1.9, 2.0, 16000.0, 3.2),
        time_to_99=report.TimeTo99(
            fast_wall_s=13.0,
            fast_exit_s=14.0,
            fast_test_acc=0.9904,
            fast_epochs=3,
            fast_reached_99=True,
            examplesnet_wall_s=200.0,
            examplesnet_exit_s=202.0,
            examplesnet_epochs=4,
            examplesnet_epoch_cap=6,
            examplesnet_epoch_s=[45.0] * 4,
            examplesnet_val_acc_best=0.9904,
            examplesnet_test_acc=0.99,
            examplesnet_reached_99=True,
            speedup=report.ratio(200.0, 13.0),
            target_speedup=15.0,
            hand_twoconv_epoch_s=6.0,
            fast_over_2_hand_epochs=report.ratio(13.0, 12.0),  # 1.083: a miss
            target_fast_over_2_hand_epochs=1.0,
        ),
        side_by_side=report.SideBySide(
            solo_images_per_s=12000.0,
            pair_images_per_s=[7200.0, 4000.0],
            pair_over_solo=[0.6, 0.333],  # the lower one misses
            target_pair_over_solo=0.4,
            fixed_solo_images_per_s=12500.0,
            fixed_pair_images_per_s=[2500.0, 2400.0],
            fixed_pair_over_solo=[0.2, 0.192],
            solo_over_fixed_solo=0.96,
            target_solo_over_fixed_solo=0.97,
        ),
        flops=report.Flops(
            model="twoconv",
            best_batch=128,
            train_flop_per_image=2768256,
            achieved_flop_per_s=38_000_000_000,
            matmul_flop_per_s=160_000_000_000,
            fraction_of_matmul=0.2375,
            fast_batch=256,
            fast_channels_last=True,
            fast_images_per_s=20000.0,
            fast_achieved_flop_per_s=55_000_000_000,
            fast_fraction_of_matmul=0.3438,
        ),
        startup=report.Startup(
            help=case(0.8, 0, 0, [], 1.5),
            cfg_job=case(1.5, 0, 0, [], 1.5),  # at the bound of "< 1.5 s": a miss
            config_error=case(0.4, 2, 2, ["torch"], 1.5),
            first_training_step_s=4.4,
        ),
        steps_per_call=report.StepsPerCall(
            model="twoconv",
            batch=64,
            epochs=3,
            train_batches="epoch",
            many=side(16, 11000.0, 20.0, [11000.0, 10500.0], [20.0, 21.0]),
            one=side(1, 9000.0, 24.0, [8800.0, 9000.0], [24.0, 25.0]),
            ratio=report.ratio(11000.0, 9000.0),
            target=1.1,
            wall_ratio=report.ratio(24.0, 20.0),
        ),
        bench_seconds=700.0,
    )


def test_printer_on_a_hand_made_result() -> None:
    res = hand_made()
    text = report.table(res)
    check_table(text, report.to_json(res))
    rows = {(r[0], r[1]): r for r in printed_rows(text)}
    assert rows["overhead", "twoconv batch 64 (epoch, 16 per call)"][5] == ">= 0.95 pass"
    assert rows["overhead", "twoconv batch 32 (epoch, 16 per call)"][5] == ">= 0.95 miss"
    assert rows["overhead", "twoconv batch 32 (epoch, 16 per call)"][7] == "0.65"
    assert rows["overhead", "twoconv batch 64, channels_last (epoch, 16 per call)"][5] == ""
    assert rows["seeds pipeline", "twoconv batch 64"][5] == ">= 2.0 miss"
    assert rows["time to 99%", "fast vs 2 hand-loop twoconv epochs"][5] == "<= 1.0 miss"
    assert rows["start-up", "cfg_job (exit 0)"][5] == "< 1.5 s miss"
    assert rows["start-up", "config_error (exit 2)"][3] == "torch"
    spc = rows["steps_per_call", "default run: twoconv batch 64, 3 ep (epoch), steps_per_call=16 vs 1"]
    assert spc[2:6] == [
        "11,000 img/s, process 20.0 s",
        "steps_per_call=1 9,000 img/s, process 24.0 s",
        "1.222",
        ">= 1.1 pass",
    ]


def test_printer_catches_a_wrong_row() -> None:
    """The checker itself fails on a ratio that is not package/baseline, and on a stale target."""
    res = hand_made()
    res.overhead[0].ratio = 0.9  # 9500 / 10000 is 0.95
    with pytest.raises(AssertionError):
        check_table(report.table(res), report.to_json(res))
    res = hand_made()
    d = report.to_json(res)
    d["seeds"]["target"] = 1.5  # a target not in TARGETS
    with pytest.raises(AssertionError):
        check_table(report.table(res), d)


def test_partial_result_prints_and_keeps_only_its_legs() -> None:
    full = hand_made()
    res = report.BenchResult(quick=True, machine=full.machine, steps_per_call=full.steps_per_call)
    d = report.to_json(res)
    assert set(d) == {"quick", "machine", "steps_per_call"}
    text = report.table(res)
    check_table(text, d)
    assert [r[0] for r in printed_rows(text)] == ["steps_per_call"]
    assert report.to_json(report.from_json(d)) == d


def test_committed_results_still_read_and_print() -> None:
    """bench/results.json (written before the steps_per_call leg, with time_to_99 against three
    hand-loop epochs) reads into the typed results with every key kept, in order, the time against
    two hand-loop epochs worked out from the same seconds, and its table checks out."""
    d = json.loads(COMMITTED.read_text())
    again = report.to_json(report.from_json(d))
    expected = json.loads(COMMITTED.read_text())
    t = expected["time_to_99"]
    if "fast_over_3_hand_epochs" in t:
        del t["fast_over_3_hand_epochs"], t["target_fast_over_3_hand_epochs"]
        t["fast_over_2_hand_epochs"] = round(t["fast_wall_s"] / (2 * t["hand_twoconv_epoch_s"]), 3)
        t["target_fast_over_2_hand_epochs"] = 1.0
    assert again == expected and list(again) == list(expected)
    check_table(report.table(report.from_json(d)), d)


# ---- one quick run of QUICK_LEGS, shared by the tests below ----------------------------------------------
def git_status() -> str:
    found = subprocess.run(
        ["git", "status", "--porcelain", "bench"], cwd=REPO, capture_output=True, text=True
    )
    return found.stdout if found.returncode == 0 else ""


@dataclass
class QuickRun:
    proc: subprocess.CompletedProcess[str]
    result: dict[str, Any]
    committed_before: bytes
    status_before: str
    status_after: str


@pytest.fixture(scope="module")
def quick(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> QuickRun:
    """Without --out, a partial run's numbers go to the uncommitted outputs/, never bench/results.json."""
    out = REPO / "outputs" / "bench" / "partial.json"
    out.unlink(missing_ok=True)
    committed = COMMITTED.read_bytes()
    status = git_status()
    env = {**os.environ, "MNIST_ROOT": str(mnist_root)}
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH / "bench.py"),
            "--quick",
            "--threads",
            "1",
            "--legs",
            ",".join(QUICK_LEGS),
        ],
        cwd=tmp_path_factory.mktemp("bench"),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return QuickRun(proc, json.loads(out.read_text()), committed, status, git_status())


def test_quick_run_leaves_committed_results_and_git_alone(quick: QuickRun) -> None:
    assert COMMITTED.read_bytes() == quick.committed_before
    assert quick.status_after == quick.status_before


def test_quick_run_writes_its_legs(quick: QuickRun) -> None:
    res = quick.result
    assert res["quick"] is True
    assert set(res) == {"quick", "machine", "bench_seconds", *QUICK_LEGS}
    # the JSON is exactly the typed results: a key added, lost or renamed on one side fails here
    assert report.to_json(report.from_json(res)) == res
    assert all(r["package_images_per_s"] > 0 and r["plain_images_per_s"] > 0 for r in res["overhead"])
    assert res["seeds"]["torchvision_loop_images_per_s"] > 0
    assert res["time_to_99"]["fast_wall_s"] > 0 and res["time_to_99"]["examplesnet_wall_s"] > 0
    assert res["flops"]["train_flop_per_image"] > 0 and res["flops"]["matmul_flop_per_s"] > 0
    startup = res["startup"]
    for case in ("help", "cfg_job", "config_error"):
        assert startup[case]["exit_code"] == startup[case]["expected_exit_code"], case
        assert startup[case]["heavy_imports"] == [], f"{case} imported {startup[case]['heavy_imports']}"
    assert startup["first_training_step_s"] > 0


def test_quick_run_prints_a_row_per_result(quick: QuickRun) -> None:
    check_table(quick.proc.stdout, quick.result)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--legs", "seeds"], "add overhead to --legs"),
        (["--legs", "startup", "--out", str(COMMITTED)], "never replaces bench/results.json"),
    ],
)
def test_legs_refuses_before_measuring(args: list[str], says: str, tmp_path: Path) -> None:
    committed = COMMITTED.read_bytes()
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench.py"), *args], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 2 and says in proc.stderr, proc.stderr
    assert COMMITTED.read_bytes() == committed
