"""What a user sees: a progress bar that counts batches in 80 columns, a quiet console, helpful
--help, fair threads beside other work, and the tests' own data finding."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, TINY, MnistMissing, find_mnist, has_mnist, run_cli, run_dirs

from mnist_lit.threads import fair_share

QUIET_TINY = [a for a in TINY if not a.startswith("trainer.enable_progress_bar")]


def test_progress_bar_counts_batches_in_80_columns(tmp_path: Path, mnist_root: Path) -> None:
    """12 batches at 4 per training step: the bar says 12/12 (not 3/3), on one line of 80 columns."""
    os.environ["COLUMNS"] = "80"
    try:
        result = run_cli(
            *[a for a in QUIET_TINY if "limit_train" not in a], "trainer.limit_train_batches=12",
            "steps_per_call=4", "trainer.enable_model_summary=true", cwd=tmp_path, mnist_root=mnist_root,
        )  # fmt: skip
    finally:
        del os.environ["COLUMNS"]
    assert result.returncode == 0, result.stderr[-3000:]
    bars = [line for line in result.stdout.splitlines() if line.startswith("Epoch 0/0")]
    assert bars and all(" 12/12 " in line for line in bars), result.stdout[-2000:]
    assert all(len(line) <= 80 for line in result.stdout.splitlines() if "━" in line or "│" in line)
    # the model summary: the layers a forward pass runs, and its FLOPs for one digit (not a column of 0)
    assert "Total FLOPs: 0" not in result.stdout
    assert re.search(r"one digit's forward pass: [\d.]+ [KM] FLOPs", result.stdout), result.stdout[-3000:]
    assert "val_acc_best" not in result.stdout  # metrics are not layers


@pytest.mark.parametrize("command", ["evaluate", "predict", "export"])
def test_checkpoint_commands_help_lists_their_own_options(command: str, tmp_path: Path) -> None:
    result = run_cli("--help", cwd=tmp_path, module=f"mnist_lit.{command}")
    assert result.returncode == 0, result.stderr
    assert "ckpt: ???" in result.stdout and "twoconv" in result.stdout  # its keys, and model=NAME
    for other in ("optim:", "sched:", "experiment:", "hparams_search:", "accelerator:"):
        assert other not in result.stdout, f"{command} --help lists the training group {other}"


def test_report_into_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    """``python -m mnist_lit.report DIR | head -1``: the reader leaves early; no BrokenPipeError."""
    for num in range(1500):
        job = tmp_path / f"{num}_job"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- optim.lr={num}\n")
        (job / "metrics.json").write_text(json.dumps({"status": "completed", "val/acc_best": 0.9}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "mnist_lit.report", str(tmp_path), "--no-write"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith("# Runs")  # job folders without a sweep record
    proc.stdout.close()  # as head does after its line
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_fair_share_leaves_busy_cores_to_others() -> None:
    assert [fair_share(2, busy) for busy in (0.0, 0.3, 0.6, 1.0, 1.4, 2.0, 3.0)] == [2, 2, 1, 1, 1, 1, 1]
    assert [fair_share(8, busy) for busy in (0.0, 1.0, 2.6, 7.9)] == [8, 7, 5, 1]


def test_a_run_beside_a_busy_core_trains_on_the_cores_left(tmp_path: Path, mnist_root: Path) -> None:
    """A neighbour keeping one core busy: the run counts it and says so in its log; threads=N overrides."""
    from mnist_lit.threads import available_cores

    cores = available_cores()
    (tmp_path / "chosen").mkdir()
    (tmp_path / "fixed").mkdir()
    spin = subprocess.Popen(
        [sys.executable, "-c", "import time\nend = time.time() + 60\nwhile time.time() < end: pass"]
    )
    try:
        time.sleep(0.5)
        result = run_cli(*TINY, cwd=tmp_path / "chosen", mnist_root=mnist_root)
        fixed = run_cli(*TINY, f"threads={cores}", cwd=tmp_path / "fixed", mnist_root=mnist_root)
    finally:
        spin.kill()
    assert result.returncode == 0 and fixed.returncode == 0, result.stderr[-2000:] + fixed.stderr[-2000:]
    (run,) = run_dirs(tmp_path / "chosen")
    chosen = re.search(r"torch threads: (\d+) of (\d+) cores", (run / "mnist_lit.log").read_text())
    assert chosen, (run / "mnist_lit.log").read_text()[-2000:]
    assert int(chosen.group(2)) == cores and int(chosen.group(1)) == max(1, cores - 1)
    (run,) = run_dirs(tmp_path / "fixed")
    assert "torch threads:" not in (run / "mnist_lit.log").read_text()
    assert json.loads((run / "metrics.json").read_text())["torch_threads"] == cores


@pytest.fixture
def fake_mnist(tmp_path: Path) -> Path:
    root = tmp_path / "mine"
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        (raw / name).write_bytes(b"x")
    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"x")
    return root


def test_the_tests_use_mnist_root_when_set(fake_mnist: Path, tmp_path: Path) -> None:
    def never(root: Path) -> None:
        raise AssertionError("no download when MNIST_ROOT is set")

    assert find_mnist(str(fake_mnist), tmp_path / "none", tmp_path / "data", never) == fake_mnist
    with pytest.raises(MnistMissing, match="MNIST_ROOT=.* holds no MNIST/raw/"):
        find_mnist(str(tmp_path / "empty"), tmp_path / "none", tmp_path / "data", never)


def test_the_tests_download_mnist_once_into_the_default_root(fake_mnist: Path, tmp_path: Path) -> None:
    calls: list[Path] = []

    def download(root: Path) -> None:  # stands in for torchvision's download
        calls.append(root)
        (root / "MNIST").mkdir(parents=True)
        (fake_mnist / "MNIST" / "raw").rename(root / "MNIST" / "raw")

    default = tmp_path / "data"
    assert find_mnist(None, tmp_path / "none", default, download) == default
    assert calls == [default] and has_mnist(default)
    assert find_mnist(None, tmp_path / "none", default, download) == default
    assert calls == [default]  # once


def test_the_tests_stop_with_one_message_without_mnist(tmp_path: Path) -> None:
    def offline(root: Path) -> None:
        raise OSError("no network")

    with pytest.raises(
        MnistMissing, match=r"could not be downloaded .*no network.*MNIST_ROOT=/path/to/mnist"
    ):
        find_mnist(None, tmp_path / "none", tmp_path / "data", offline)


def test_a_fresh_checkout_without_mnist_stops_the_suite_with_one_message(tmp_path: Path) -> None:
    """The real fixture, in a pytest run where MNIST is nowhere and cannot be downloaded."""
    (tmp_path / "test_one.py").write_text("def test_needs_data(mnist_root):\n    pass\n")
    (tmp_path / "conftest.py").write_text(
        "import importlib.util\nfrom pathlib import Path\n"
        f"spec = importlib.util.spec_from_file_location('real', {str(REPO / 'tests' / 'conftest.py')!r})\n"
        "real = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(real)\n"
        "real.DEFAULT_MNIST_ROOT = Path(__file__).parent / 'no-shared'\n"
        "real.REPO = Path(__file__).parent\n"
        "def offline(root):\n    raise OSError('no network here')\n"
        "real.download_mnist = offline\nmnist_root = real.mnist_root\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MNIST_ROOT"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_one.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "MNIST_ROOT=/path/to/mnist make test" in out and "passed" not in out, out
