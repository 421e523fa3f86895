"""Shared fixtures: where the real MNIST is, and how to run the CLI as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import mnist_lit

REPO = Path(__file__).resolve().parents[1]
# the configs as the installed package ships them
CONF = Path(mnist_lit.__file__).resolve().parent / "conf"
# CI and `make test` use the copy beside the repository unless MNIST_ROOT says otherwise
DEFAULT_MNIST_ROOT = REPO.parent / "shared" / "mnist"

# tiny but real: a few batches of real MNIST, evaluated on a few batches
TINY = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=20",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.num_sanity_val_steps=0",
]


@pytest.fixture(scope="module")
def hydra_conf() -> Iterator[None]:
    """Hydra initialised on the package's configs, for compose() in a test module."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    root = Path(os.environ.get("MNIST_ROOT", DEFAULT_MNIST_ROOT))
    if not (root / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        pytest.skip(f"real MNIST not found under {root} (set MNIST_ROOT)")
    return root


def run_cli(
    *args: str, cwd: Path, mnist_root: Path | None = None, module: str = "mnist_lit", timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m <module> ARGS`` in ``cwd`` the way a user would; capture its output."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    if mnist_root is not None:
        env["MNIST_ROOT"] = str(mnist_root)
    env["PYTHONUNBUFFERED"] = "1"
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_dirs(cwd: Path) -> list[Path]:
    """Run directories (those holding a composed .hydra/config.yaml) under cwd/outputs, oldest first."""
    return sorted(p.parent.parent for p in (cwd / "outputs").rglob(".hydra/config.yaml"))


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="session")
def trained_run(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One short real twoconv run (about 96% test accuracy), shared by the inspection, evaluate,
    predict and export tests; its test step sees the first 500 test images."""
    cwd = tmp_path_factory.mktemp("trained")
    overrides = [o for o in TINY if not o.startswith("trainer.limit_train_batches")]
    result = run_cli(
        *overrides,
        "trainer.limit_train_batches=300",
        "trainer.limit_test_batches=1",
        "data.eval_batch_size=500",
        "inspect.max_misclassified=32",
        "threads=1",
        cwd=cwd,
        mnist_root=mnist_root,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = run_dirs(cwd)
    return run_dir
