"""At the edges: a refused command changes nothing, a completed run is not re-run, several devices work.

Every case is a real command in a subprocess, as a user types it, on real MNIST with tiny limits.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import read_metrics, run_cli, run_dirs

TINY = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=6",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "inspect.enabled=false",
    "threads=1",
]


def contents(folder: Path) -> dict[str, bytes | None]:
    """Every file and folder under ``folder`` with its bytes (None for a folder)."""
    return {
        str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes())
        for p in sorted(folder.rglob("*"))
    }


def refused(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    for text in expected:
        assert text in output, output[-3000:]


@pytest.fixture(scope="module")
def finished(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A completed one-epoch run with the default per-step schedule (one-cycle): (cwd, run folder)."""
    cwd = tmp_path_factory.mktemp("finished")
    result = run_cli(*TINY, cwd=cwd, mnist_root=mnist_root)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = run_dirs(cwd)
    return cwd, run


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # the schedule was sized for 6 steps: refused once Lightning knows the new length
        (["trainer.max_epochs=4"], ["per-step schedule was sized for 6 steps"]),
        # another architecture: refused when the checkpoint is checked
        (["trainer.max_epochs=4", "model=resnet"], ["does not fit the requested architecture"]),
        # a value torch refuses, and one the package refuses before torch loads
        (["trainer.max_epochs=4", "+optim.foo=1"], ["optim.foo is not an argument of torch.optim.Adam"]),
        (["trainer.max_epochs=4", "optim.lr=-1"], ["optim.lr=-1 is not allowed"]),
        # nothing left to train
        ([], ["is complete", "trainer.max_epochs=6", "python -m mnist_lit.evaluate ckpt="]),
    ],
    ids=["longer schedule", "other model", "torch refuses", "package refuses", "complete"],
)
def test_a_refused_resume_changes_nothing(
    finished: tuple[Path, Path], mnist_root: Path, args: list[str], expected: list[str]
) -> None:
    cwd, run = finished
    before = contents(cwd)
    refused(run_cli(f"ckpt_path={run}", *args, cwd=cwd, mnist_root=mnist_root), *expected)
    assert contents(cwd) == before  # config, overrides, log, metrics, checkpoints, events: byte for byte
    # and the run still resumes as before: its replayed overrides were not touched
    again = run_cli(f"ckpt_path={run}", cwd=cwd, mnist_root=mnist_root)
    refused(again, "is complete")
    assert contents(cwd) == before


def test_ckpt_path_last_on_a_completed_run_rewrites_nothing(
    finished: tuple[Path, Path], mnist_root: Path
) -> None:
    cwd, run = finished
    before = contents(cwd)
    result = run_cli("ckpt_path=last", cwd=cwd, mnist_root=mnist_root)
    refused(result, f"run {run} is complete", "cannot be trained on", "sched=steplr")
    assert contents(cwd) == before


def test_a_config_error_leaves_no_folder(tmp_path: Path, mnist_root: Path) -> None:
    """Refused before the job (the package's own check) and after torch loaded (a library's refusal)."""
    for bad in ("optim.lr=-1", "+trainer.foo=1"):
        refused(run_cli(*TINY, bad, cwd=tmp_path, mnist_root=mnist_root))
        assert not (tmp_path / "outputs").exists(), bad


def test_a_config_error_in_an_existing_folder_leaves_it_as_it_was(tmp_path: Path, mnist_root: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes\n")
    before = contents(tmp_path)
    refused(run_cli(*TINY, "+optim.foo=1", f"hydra.run.dir={mine}", cwd=tmp_path, mnist_root=mnist_root))
    assert contents(tmp_path) == before


def test_extending_a_completed_run_trains_on_in_its_folder(tmp_path: Path, mnist_root: Path) -> None:
    """Report 001 trains on for more epochs: an epoch schedule can be extended, and the record adds up."""
    first = run_cli(*TINY, "sched=steplr", cwd=tmp_path, mnist_root=mnist_root)
    assert first.returncode == 0, first.stderr[-3000:]
    (run,) = run_dirs(tmp_path)
    earlier = read_metrics(run)
    more = run_cli(f"ckpt_path={run}", "trainer.max_epochs=2", cwd=tmp_path, mnist_root=mnist_root)
    assert more.returncode == 0, more.stderr[-3000:]
    assert run_dirs(tmp_path) == [run]
    record = read_metrics(run)
    assert record["status"] == "completed" and record["epochs"] == 2
    assert record["global_steps"] == 2 * earlier["global_steps"]
    assert record["val/acc_best"] >= earlier["val/acc_best"]
    assert record["wall_seconds"] > earlier["wall_seconds"]  # both stretches
    assert set(earlier) <= set(record)  # every key of the earlier record is still there
    assert "trainer.max_epochs=2" in (run / ".hydra" / "overrides.yaml").read_text()


@pytest.mark.parametrize(
    "args",
    [["trainer.devices=2"], ["accelerator=ddp", "trainer.accelerator=cpu", "trainer.limit_train_batches=2"]],
    ids=["devices=2", "ddp with 1 batch per process"],
)
def test_two_processes_train_and_write_each_file_once(
    args: list[str], tmp_path: Path, mnist_root: Path
) -> None:
    """Two CPU processes (gloo): Lightning's DDP with the data module's own shards."""
    result = run_cli(*TINY, *args, cwd=tmp_path, mnist_root=mnist_root)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Traceback" not in output and "terminate called" not in output, output[-3000:]
    (run,) = run_dirs(tmp_path)
    record = read_metrics(run)
    assert record["status"] == "completed"
    assert record["global_steps"] == (6 if "trainer.devices=2" in args else 2)  # limits count per process
    logs = sorted(p.name for p in run.glob("*.log"))
    assert logs == ["mnist_lit.log", "train_ddp_process_1.log"]  # one log per process
    assert not list(run.rglob("*.tmp"))


@pytest.mark.parametrize("total", [1, 2, 3, 4, 5, 8])
def test_one_cycle_fits_any_short_run(total: int) -> None:
    """torch's OneCycleLR divides by zero when its rise ends on the first step (4 steps at 0.25)."""
    import torch

    from mnist_lit.schedules import one_cycle

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = one_cycle(opt, total_steps=total, steps_per_epoch=total)
    lrs = []
    for _ in range(total):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert all(0 < lr <= 0.1 + 1e-12 for lr in lrs[:-1])
