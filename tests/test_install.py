"""A non-editable install carries the whole config tree and runs from any directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_ships_every_config_and_composes(tmp_path: Path) -> None:
    wheel_dir, target = tmp_path / "wheel", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", str(REPO), "--no-deps", "-w", str(wheel_dir)], check=True, cwd=tmp_path)
    (wheel,) = wheel_dir.glob("*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True)

    shipped = {p.relative_to(target / "mnist_lit") for p in (target / "mnist_lit" / "conf").rglob("*.yaml")}
    in_repo = {p.relative_to(REPO) for p in (REPO / "conf").rglob("*.yaml")}
    assert shipped == in_repo

    env = {**os.environ, "PYTHONPATH": str(target)}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run(
        [sys.executable, "-c", "import mnist_lit; print(mnist_lit.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(str(target))
    for command in ([sys.executable, "-m", "mnist_lit"], [str(target / "bin" / "mnist-lit")]):
        job = subprocess.run(
            [*command, "--cfg", "job", "model=resnet", "sched=warmup"],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
        )
        assert job.returncode == 0, job.stderr
        assert "mnist_lit.models.ResNet8" in job.stdout and "mnist_lit.schedules.warmup_cosine" in job.stdout
