"""The benchmark's smoke run: every leg runs and the JSON holds every field (no timing asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO

OVERHEAD_KEYS = {
    "model",
    "batch",
    "train_batches",
    "package_images_per_s",
    "plain_images_per_s",
    "ratio",
    "target",
    "package_wall_s",
    "package_images_per_cpu_s",
    "plain_images_per_cpu_s",
    "cpu_ratio",
    "first_step_s",
    "steps_per_call",
}
SEEDS_KEYS = {"model", "batch", "package_images_per_s", "torchvision_loop_images_per_s", "ratio", "target"}
TIME_TO_99_KEYS = {
    "fast_wall_s",
    "fast_exit_s",
    "examplesnet_exit_s",
    "fast_test_acc",
    "fast_epochs",
    "fast_reached_99",
    "examplesnet_wall_s",
    "examplesnet_epochs",
    "examplesnet_epoch_cap",
    "examplesnet_epoch_s",
    "examplesnet_val_acc_best",
    "examplesnet_test_acc",
    "examplesnet_reached_99",
    "speedup",
    "target_speedup",
    "hand_twoconv_epoch_s",
    "fast_over_3_hand_epochs",
    "target_fast_over_3_hand_epochs",
}
FLOPS_KEYS = {
    "model",
    "best_batch",
    "train_flop_per_image",
    "achieved_flop_per_s",
    "matmul_flop_per_s",
    "fraction_of_matmul",
}
STARTUP_CASE_KEYS = {"seconds", "exit_code", "expected_exit_code", "heavy_imports", "target_s"}


def git_status() -> str:
    found = subprocess.run(
        ["git", "status", "--porcelain", "bench"], cwd=REPO, capture_output=True, text=True
    )
    return found.stdout if found.returncode == 0 else ""


def test_quick_bench_writes_every_field(mnist_root: Path, tmp_path: Path) -> None:
    """Without --out, the smoke run's numbers go to the uncommitted outputs/, never bench/results.json."""
    out = REPO / "outputs" / "bench" / "quick.json"
    out.unlink(missing_ok=True)
    committed = (REPO / "bench" / "results.json").read_bytes()
    status = git_status()
    env = {**os.environ, "MNIST_ROOT": str(mnist_root)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench.py"), "--quick", "--threads", "1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (REPO / "bench" / "results.json").read_bytes() == committed
    assert git_status() == status
    res = json.loads(out.read_text())
    assert res["quick"] is True
    assert {"machine", "overhead", "seeds", "time_to_99", "flops", "startup", "bench_seconds"} <= set(res)
    assert res["overhead"] and all(OVERHEAD_KEYS <= set(row) for row in res["overhead"])
    assert all(row["package_images_per_s"] > 0 and row["plain_images_per_s"] > 0 for row in res["overhead"])
    assert SEEDS_KEYS <= set(res["seeds"])
    assert TIME_TO_99_KEYS <= set(res["time_to_99"])
    assert FLOPS_KEYS <= set(res["flops"])
    assert res["flops"]["train_flop_per_image"] > 0 and res["flops"]["matmul_flop_per_s"] > 0
    startup = res["startup"]
    for case in ("help", "cfg_job", "config_error"):
        assert STARTUP_CASE_KEYS <= set(startup[case])
        assert startup[case]["exit_code"] == startup[case]["expected_exit_code"], case
        assert startup[case]["heavy_imports"] == [], f"{case} imported {startup[case]['heavy_imports']}"
    assert startup["first_training_step_s"] > 0
    assert all(
        r > 0
        for r in res["side_by_side"]["pair_images_per_s"] + res["side_by_side"]["fixed_pair_images_per_s"]
    )
    assert "| overhead | twoconv batch 64 " in proc.stdout  # the printed table
    assert "| side by side | two default runs started together" in proc.stdout
