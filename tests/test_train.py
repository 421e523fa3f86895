"""End to end, as a user runs it: the CLI trains on real MNIST and leaves a complete run directory."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, last_checkpoint, read_metrics, run_cli, run_dirs, train_run

from mnist_lit.events import tensorboard_tag
from mnist_lit.rundir import evaluation_checkpoint

SCALAR_TAGS = {"train/loss_step", "train/loss_epoch", "train/acc", "val/loss", "val/acc", "val/acc_best"}
SCALAR_TAGS |= {"train/lr", "test/acc", "test/loss"}


def event_scalars_and_plugins(run_dir: Path) -> tuple[set[str], set[str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: set[str] = set()
    plugins: set[str] = set()
    for events in run_dir.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
        plugins |= set(acc.PluginAssets("hparams") and ["hparams"]) | set(acc.Tags().get("tensors", []))
        if acc.summary_metadata:
            plugins |= {m.plugin_data.plugin_name for m in acc.summary_metadata.values()}
    return tags, plugins


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> Path:
    return train_run(
        tmp_path_factory.mktemp("e2e"),
        mnist_root,
        "model=twoconv",
        "optim=adam",
        "sched=steplr",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
    )


def test_one_epoch_reaches_97_5_percent(one_epoch: Path) -> None:
    """One epoch of twoconv + Adam + StepLR (seed 42) learns the digits.

    Measured spread of test/acc for this setting (``python -m mnist_lit -m model=twoconv optim=adam
    sched=steplr trainer.max_epochs=1 seed=42,0,1,2,3 threads=1,2``): 97.92-98.28% on a 2-core AMD
    EPYC (seed 42: 97.92% with one thread, 97.93% with two); the 2-core Intel Xeon the suite was
    first run on gave at least 98.0% for seed 42. Other CPUs pick other kernels, so the last digits
    move; 97.5% sits 0.4 points below the lowest value measured, about the whole spread again.
    """
    metrics = read_metrics(one_epoch)
    assert metrics["status"] == "completed"
    assert metrics["test/acc"] >= 0.975
    assert metrics["epochs"] == 1 and metrics["wall_seconds"] > 0
    assert {"val/acc_best", "test/acc", "test/loss"} <= set(metrics)


def test_run_directory_holds_everything(one_epoch: Path) -> None:
    assert (one_epoch / ".hydra" / "config.yaml").is_file()
    assert (one_epoch / "mnist_lit.log").read_text().count("test/acc") >= 1
    checkpoints = {p.name for p in (one_epoch / "checkpoints").iterdir()}
    assert "last.ckpt" in checkpoints
    assert any(name.startswith("epoch=000-val_acc=") for name in checkpoints)
    metrics = read_metrics(one_epoch)
    assert (
        Path(metrics["best_checkpoint"]).is_file()
        and metrics["tested_checkpoint"] == metrics["best_checkpoint"]
    )


def test_tensorboard_has_every_tag_and_hparams(one_epoch: Path) -> None:
    tags, plugins = event_scalars_and_plugins(one_epoch)
    expected = {tensorboard_tag(m) for m in SCALAR_TAGS}  # TensorBoard's names lead with the metric
    assert expected <= tags, sorted(expected - tags)
    assert "hparams" in plugins


def test_resume_ends_at_the_same_epoch_count(tmp_path: Path, mnist_root: Path) -> None:
    """Stopped after epoch 1 of an epoch-stepped schedule, then continued to epoch 2."""
    (tmp_path / "straight").mkdir()
    (tmp_path / "resumed").mkdir()
    tiny = [*TINY, "sched=steplr"]
    straight = run_cli(*tiny, "trainer.max_epochs=2", cwd=tmp_path / "straight", mnist_root=mnist_root)
    first = run_cli(*tiny, "trainer.max_epochs=1", cwd=tmp_path / "resumed", mnist_root=mnist_root)
    assert straight.returncode == 0 and first.returncode == 0, first.stderr[-2000:]
    last = run_dirs(tmp_path / "resumed")[0] / "checkpoints" / "last.ckpt"
    resumed = run_cli(
        *tiny, "trainer.max_epochs=2", f"ckpt_path={last}", cwd=tmp_path / "resumed", mnist_root=mnist_root
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected = read_metrics(run_dirs(tmp_path / "straight")[0])
    got = [read_metrics(d) for d in run_dirs(tmp_path / "resumed") if (d / "metrics.json").is_file()]
    final = max(got, key=lambda m: m["global_steps"])
    assert (
        (final["epochs"], final["global_steps"]) == (expected["epochs"], expected["global_steps"]) == (2, 40)
    )


def test_last_checkpoint_is_the_last_epoch_even_if_not_the_best(tmp_path: Path, mnist_root: Path) -> None:
    """lr 1e-12: the second epoch's val/acc only ties the first's, so it is not kept as a best, yet
    last.ckpt (what resume and the guards name) must still be the end of epoch 2, not of epoch 1.
    With test_checkpoint=last that last.ckpt is what the run tests and what evaluate then takes."""
    run = train_run(
        tmp_path, mnist_root, *TINY, "optim.lr=1e-12", "trainer.max_epochs=2", "test_checkpoint=last"
    )
    best, last = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert best.startswith("epoch=000-val_acc=") and last == "last.ckpt"
    saved = last_checkpoint(run)
    metrics = read_metrics(run)
    assert (saved["epoch"], saved["global_step"]) == (1, 40) and metrics["global_steps"] == 40
    assert Path(metrics["best_checkpoint"]).name == best and Path(metrics["tested_checkpoint"]).name == last
    assert evaluation_checkpoint(run) == run / "checkpoints" / last


def test_help_and_cfg_job_answer(tmp_path: Path) -> None:
    help_text = run_cli("--help", cwd=tmp_path)
    assert help_text.returncode == 0
    assert (
        "model: bnconvnet, convnet, examplesnet, oneconv, resnet, sepconv, simplecnn, tutorialnet, twoconv, "
        "vggnet" in help_text.stdout
    )
    job = run_cli("--cfg", "job", "model=resnet", "optim.lr=0.5", cwd=tmp_path)
    assert job.returncode == 0
    assert "_target_: mnist_lit.models.ResNet8" in job.stdout and "lr: 0.5" in job.stdout
    assert not (tmp_path / "outputs").exists()


def test_console_script_is_installed(tmp_path: Path) -> None:
    exe = shutil.which("mnist-lit", path=str(Path(sys.executable).parent))
    assert exe, "the mnist-lit console script is not installed beside this python"
    result = subprocess.run([exe, "--cfg", "job", "optim=sgd"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0 and "_target_: torch.optim.SGD" in result.stdout


def test_missing_data_stops_before_training(tmp_path: Path) -> None:
    result = run_cli(*TINY, f"data.root={tmp_path / 'empty'}", "data.download=false", cwd=tmp_path)
    assert result.returncode == 2
    assert "train-images-idx3-ubyte" in result.stderr and "MNIST_ROOT" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not list((tmp_path / "outputs").rglob("*.ckpt"))


def test_extending_a_per_step_schedule_is_refused(tmp_path: Path, mnist_root: Path) -> None:
    first = run_cli(*TINY, "sched=onecycle", cwd=tmp_path, mnist_root=mnist_root)
    assert first.returncode == 0, first.stderr[-2000:]
    last = run_dirs(tmp_path)[0] / "checkpoints" / "last.ckpt"
    longer = run_cli(
        *TINY,
        "sched=onecycle",
        "trainer.max_epochs=2",
        f"ckpt_path={last}",
        cwd=tmp_path,
        mnist_root=mnist_root,
    )
    assert longer.returncode == 2
    assert "sized for 20 steps but this run has 40" in longer.stderr
    assert "Traceback" not in longer.stderr
