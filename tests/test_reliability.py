"""Interrupted runs resume exactly, runs reproduce, damaged data, divergence and full disks stop cleanly.

One test per point of the reliability contract, on real MNIST with tiny limits where training is
needed. Signals go to a real child process (tests/paced_cli.py: the CLI, paced so that a signal
lands mid-epoch); data damage happens on copies of the raw files, never on the shared folder.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import WARNING_LINE, last_checkpoint, read_metrics, run_cli, run_dirs, train_run

from mnist_lit import integrity
from mnist_lit.errors import UserError

TESTS = Path(__file__).resolve().parent
BATCHES = 6  # training batches per epoch
# two short epochs of a net with dropout (so the RNG state matters), seeded and deterministic
EXACT = [
    "model=tutorialnet",
    "seed=3",
    "threads=1",
    "trainer.max_epochs=2",
    f"trainer.limit_train_batches={BATCHES}",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.deterministic=true",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.num_sanity_val_steps=0",
    "inspect.enabled=false",
]


def env_for(mnist_root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(MNIST_ROOT=str(mnist_root), PYTHONUNBUFFERED="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    return env


def as_from_a_terminal() -> None:
    """Ctrl-C's default action, as a shell gives it: a test runner's worker may ignore SIGINT,
    and a child started from it would inherit that and never see Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def paced(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "paced_cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=as_from_a_terminal,
    )


def interrupt_at(proc: subprocess.Popen[str], marker: str, sig: int) -> tuple[str, float]:
    """Send ``sig`` once ``marker`` is printed; return the whole output and seconds to exit."""
    seen: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if line.strip() == marker:
            break
    else:
        proc.wait()
        pytest.fail(f"{marker!r} never printed:\n{''.join(seen)[-3000:]}")
    sent = time.monotonic()
    proc.send_signal(sig)
    rest, _ = proc.communicate(timeout=60)
    output = "".join(seen) + rest
    printed = WARNING_LINE.search(output)  # an interrupted run's console is as quiet as any other
    assert printed is None, output[printed.start() :].splitlines()[0]
    return output, time.monotonic() - sent


def test_a_second_ctrl_c_stops_at_once_and_says_what_is_left(tmp_path: Path, mnist_root: Path) -> None:
    """Two Ctrl-C in the first epoch: no checkpoint yet, so nothing to resume, and the log says so."""
    env = env_for(mnist_root, PACE_FROM="0:1", PACE_SLEEP="1.0")
    run = paced(*EXACT, "steps_per_call=1", cwd=tmp_path, env=env)
    seen: list[str] = []
    assert run.stdout is not None
    for line in run.stdout:
        seen.append(line)
        if line.strip() == "PACE 0 1":
            break
    run.send_signal(signal.SIGINT)
    time.sleep(0.3)
    run.send_signal(signal.SIGINT)
    rest, _ = run.communicate(timeout=60)
    output = "".join(seen) + rest
    assert run.returncode == 130, output[-3000:]
    assert "Traceback" not in output and WARNING_LINE.search(output) is None, output[-3000:]
    assert "no checkpoint was written yet" not in output
    assert "before its first checkpoint: nothing to resume" in output, output[-3000:]
    (run_dir,) = run_dirs(tmp_path)
    assert read_metrics(run_dir)["status"] == "interrupted"


def test_ctrl_c_while_starting_leaves_no_run_folder(tmp_path: Path, mnist_root: Path) -> None:
    """Stopped before training began: nothing to save, and no half-made run folder is left."""
    # the run waits after seeding (train() has started; the data and the Trainer come next) until
    # the signal comes, however slow the machine is
    run = paced(*EXACT, cwd=tmp_path, env=env_for(mnist_root, PACE_START="60"))
    seen: list[str] = []
    assert run.stdout is not None
    for line in run.stdout:
        seen.append(line)
        if line.strip() == "PACE start":
            break
    run.send_signal(signal.SIGINT)
    rest, _ = run.communicate(timeout=60)
    output = "".join(seen) + rest
    assert run.returncode == 130, output[-3000:]
    assert "stopped by Ctrl-C before training started: nothing to save" in output
    assert "Traceback" not in output, output[-3000:]
    assert not (tmp_path / "outputs").exists()


def same_weights(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> Path:
    """The run left alone, one batch per training step, which interrupted and repeated runs must match."""
    run_dir = train_run(tmp_path_factory.mktemp("reference"), mnist_root, *EXACT, "steps_per_call=1")
    assert read_metrics(run_dir)["global_steps"] == 2 * BATCHES
    return run_dir


# 1. interruption
# (steps_per_call, batch of epoch 1 the signal arrives in, optimizer steps done by the end of its
# training step): one batch per step, and three (the stop waits for the item's other two batches)
@pytest.mark.parametrize(("per_call", "batch", "steps"), [(1, 1, BATCHES + 2), (3, 1, BATCHES + 3)])
def test_ctrl_c_stops_within_seconds_and_resumes_into_the_same_run(
    tmp_path: Path, mnist_root: Path, per_call: int, batch: int, steps: int
) -> None:
    env = env_for(mnist_root, PACE_FROM=f"1:{batch}", PACE_SLEEP="0.5")
    run = paced(*EXACT, f"steps_per_call={per_call}", cwd=tmp_path, env=env)
    output, seconds = interrupt_at(run, f"PACE 1 {batch}", signal.SIGINT)
    assert seconds < 10, output[-3000:]
    (run_dir,) = run_dirs(tmp_path)
    stopped = read_metrics(run_dir)
    assert stopped["status"] == "interrupted" and "SIGINT" in stopped["reason"], stopped
    assert stopped["global_steps"] == steps  # the step under way was finished, then saved
    assert Path(stopped["resume_checkpoint"]) == run_dir / "checkpoints" / "interrupted.ckpt"
    assert Path(stopped["resume_checkpoint"]).is_file()
    log = (run_dir / "mnist_lit.log").read_text()
    assert f"run interrupted at epoch 1, step {steps}" in log and "ckpt_path=" in log
    assert "Traceback" not in output

    resumed = run_cli("ckpt_path=last", cwd=tmp_path, mnist_root=mnist_root)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert run_dirs(tmp_path) == [run_dir]  # the same run directory, no new one
    done = read_metrics(run_dir)
    assert done["status"] == "completed" and done["epochs"] == 2
    assert done["global_steps"] == 2 * BATCHES  # continued, not restarted: epoch and step counters
    assert "Restored all states from the checkpoint" in resumed.stderr + resumed.stdout
    assert [p.name for p in run_dir.iterdir() if p.name == "tb"] == ["tb"]
    assert len(list((run_dir / "tb").glob("events.out.tfevents.*"))) >= 2  # one TensorBoard run, both parts
    assert not (run_dir / "checkpoints" / "interrupted.ckpt").exists()


# 2. resume is exact, also for a run that takes three batches per training step: it makes the same
# optimizer steps as the reference, which takes one
# (the last case resumes that run with one batch per step: 3 batches into the epoch, which 2 per step
# cannot continue from and 1 can)
# (steps_per_call, batch of epoch 1 the signal arrives in, steps_per_call to resume with)
# a grouped run resumed grouped is also covered, bitwise, by tests/test_recipe.py (the default 16 per call)
@pytest.mark.parametrize(("per_call", "batch", "resume_with"), [(1, 2, 1), (3, 1, 1)])
def test_resume_mid_epoch_2_matches_the_run_left_alone(
    tmp_path: Path, mnist_root: Path, reference: Path, per_call: int, batch: int, resume_with: int
) -> None:
    env = env_for(mnist_root, PACE_FROM=f"1:{batch}", PACE_SLEEP="0.5")
    run = paced(*EXACT, f"steps_per_call={per_call}", cwd=tmp_path, env=env)
    output, _ = interrupt_at(run, f"PACE 1 {batch}", signal.SIGTERM)
    (run_dir,) = run_dirs(tmp_path)
    assert read_metrics(run_dir)["status"] == "interrupted", output[-3000:]
    assert read_metrics(run_dir)["global_steps"] == BATCHES + 3  # mid-epoch 2

    if resume_with != per_call:
        refused = run_cli(f"ckpt_path={run_dir}", "steps_per_call=2", cwd=tmp_path, mnist_root=mnist_root)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
        assert "3 batches into an epoch with steps_per_call=3" in refused.stderr
        assert (run_dir / "checkpoints" / "interrupted.ckpt").is_file()  # still there to resume from
    resumed = run_cli(
        f"ckpt_path={run_dir}", f"steps_per_call={resume_with}", cwd=tmp_path, mnist_root=mnist_root
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got, want = read_metrics(run_dir), read_metrics(reference)
    for key in ("val/acc_best", "test/acc", "test/loss", "global_steps", "epochs"):
        assert got[key] == want[key], key  # bitwise: no tolerance
    assert same_weights(last_checkpoint(run_dir)["state_dict"], last_checkpoint(reference)["state_dict"])


def test_epoch_order_depends_on_seed_and_epoch_only_and_resumes_after_done_batches() -> None:
    from mnist_lit.sampling import EpochBatchSampler

    def epoch(e: int, seed: int = 5, done: int = 0) -> list[list[int]]:
        sampler = EpochBatchSampler(100, 8, False, seed, done=lambda: done)
        sampler.set_epoch(e)
        return [[int(i) for i in batch] for batch in sampler]

    order = epoch(2)
    assert sorted(i for batch in order for i in batch) == list(range(100))  # every image once
    assert epoch(2) == order and epoch(1) != order and epoch(2, seed=6) != order
    assert epoch(2, done=4) == order[4:]  # a resumed epoch continues after the trained batches


# 3. reproducible
def test_same_command_twice_gives_identical_metrics(
    tmp_path: Path, mnist_root: Path, reference: Path
) -> None:
    run_dir = train_run(tmp_path, mnist_root, *EXACT)
    got, want = read_metrics(run_dir), read_metrics(reference)
    for key in ("val/acc_best", "test/acc", "test/loss"):
        assert got[key] == want[key], key
    assert same_weights(last_checkpoint(run_dir)["state_dict"], last_checkpoint(reference)["state_dict"])


# 4. data integrity
def damaged_copy(mnist_root: Path, dest: Path, name: str) -> Path:
    """dest/MNIST/raw with a real copy of ``name`` (to damage) and links to the other files."""
    raw = integrity.raw_dir(dest)
    raw.mkdir(parents=True)
    for spec in integrity.RAW_FILES:
        source = integrity.raw_dir(mnist_root) / spec.name
        if spec.name == name:
            shutil.copyfile(source, raw / spec.name)
        else:
            (raw / spec.name).symlink_to(source)
    return raw / name


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-1000])


def flip_a_pixel(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-5000] ^= 0xFF
    path.write_bytes(bytes(data))


def wrong_magic(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[3] = 0x01  # an image file's header now claims labels
    path.write_bytes(bytes(data))


def swap_with_test_labels(path: Path) -> None:
    shutil.copyfile(path.parent / "t10k-labels-idx1-ubyte", path)


@pytest.mark.parametrize(
    ("name", "damage", "what"),
    [
        ("train-labels-idx1-ubyte", truncate, "is truncated: 59,008 bytes, expected 60,008"),
        ("t10k-images-idx3-ubyte", flip_a_pixel, "is corrupted: its MD5 is"),
        ("train-images-idx3-ubyte", wrong_magic, "has a wrong IDX header: magic 0x00000801"),
        ("train-labels-idx1-ubyte", swap_with_test_labels, "has the size of t10k-labels-idx1-ubyte"),
    ],
    ids=["truncated", "corrupted", "wrong-header", "swapped"],
)
def test_damaged_raw_file_is_named_with_what_is_wrong(
    tmp_path: Path, mnist_root: Path, name: str, damage, what: str
) -> None:
    path = damaged_copy(mnist_root, tmp_path, name)
    damage(path)
    with pytest.raises(UserError) as err:
        integrity.check_raw_files(tmp_path)
    message = str(err.value)
    assert str(path) in message and what in message
    assert "fresh copy of the official file" in message  # how to fix it


def test_run_on_damaged_data_stops_before_training(tmp_path: Path, mnist_root: Path) -> None:
    data = tmp_path / "data"
    flip_a_pixel(damaged_copy(mnist_root, data, "train-images-idx3-ubyte"))
    result = run_cli(*EXACT, cwd=tmp_path, mnist_root=data)
    assert result.returncode == 2
    assert "train-images-idx3-ubyte is corrupted" in result.stderr and "Traceback" not in result.stderr
    assert run_dirs(tmp_path) == []  # refused before training: no half-made run folder is left
    assert not (tmp_path / "outputs").exists()


def test_the_official_files_pass(mnist_root: Path) -> None:
    integrity.check_raw_files(mnist_root)


# 5. divergence
# (steps_per_call, batch of epoch 1 whose images become NaN): with 3 per call, the first of an item
@pytest.mark.parametrize(("per_call", "batch"), [(1, 2), (3, 4)])
def test_nan_loss_stops_at_that_step_and_earlier_checkpoints_stay_valid(
    tmp_path: Path, mnist_root: Path, per_call: int, batch: int
) -> None:
    env = env_for(mnist_root, POISON_AT=f"1:{batch}")
    proc = subprocess.run(
        [sys.executable, "-m", "paced_cli", *EXACT, f"steps_per_call={per_call}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    step = BATCHES + batch + 1
    assert f"training loss became nan at step {step} (epoch 1, batch {batch})" in proc.stderr
    assert "optim.lr" in proc.stderr and "trainer.gradient_clip_val" in proc.stderr
    assert "Traceback" not in proc.stderr
    (run_dir,) = run_dirs(tmp_path)
    metrics = read_metrics(run_dir)
    assert metrics["status"] == "diverged" and metrics["global_steps"] == step - 1

    import torch

    from mnist_lit.checkpoint import load_weights_only

    last = run_dir / "checkpoints" / "last.ckpt"
    saved = load_weights_only(last)  # weights only, as the package loads checkpoints
    assert saved["global_step"] == BATCHES  # written at the end of the first epoch
    assert all(torch.isfinite(t).all() for t in saved["state_dict"].values() if t.is_floating_point())
    assert not (run_dir / "checkpoints" / "interrupted.ckpt").exists()


# 6. disk
def test_unwritable_output_dir_stops_before_training(tmp_path: Path, mnist_root: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the output folder should go\n")
    started = time.monotonic()
    result = run_cli(*EXACT, f"hydra.run.dir={blocker}/run", cwd=tmp_path, mnist_root=mnist_root)
    assert result.returncode == 2
    assert f"output folder {blocker} cannot be written" in result.stderr
    assert "hydra.run.dir=PATH" in result.stderr and "Traceback" not in result.stderr
    assert time.monotonic() - started < 30  # answered before torch and the data load


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_dir_stops_before_training(tmp_path: Path, mnist_root: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    result = run_cli(*EXACT, f"hydra.run.dir={locked}/run", cwd=tmp_path, mnist_root=mnist_root)
    assert result.returncode == 2 and "cannot be written" in result.stderr


def test_full_disk_stops_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from mnist_lit import guards, rundir

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage._replace(free=1 << 20))
    with pytest.raises(SystemExit) as stop:  # before the job: a Hydra callback, so it exits
        rundir.room_or_exit(tmp_path / "outputs", "output folder")
    assert stop.value.code == 2
    model = torch.nn.Linear(784, 10)
    with pytest.raises(UserError, match=r"has 1\.0 MiB free but this run needs about"):
        rundir.check_room(
            tmp_path / "run", "output directory", 3 * guards.checkpoint_bytes(model) + (8 << 20)
        )


# 7. concurrent runs
def test_two_runs_started_together_never_share_a_directory(tmp_path: Path, mnist_root: Path) -> None:
    # the same folder for both stands for two runs started in the same microsecond
    same = tmp_path / "outputs" / "runs" / "same"
    results: dict[str, subprocess.CompletedProcess[str]] = {}
    tiny = [a for a in EXACT if not a.startswith(("trainer.max_epochs", "trainer.limit_train", "seed="))]

    def start(seed: str) -> None:
        results[seed] = run_cli(
            *tiny, "trainer.max_epochs=1", "trainer.limit_train_batches=2", f"seed={seed}",
            f"hydra.run.dir={same}", cwd=tmp_path, mnist_root=mnist_root,
        )  # fmt: skip

    threads = [threading.Thread(target=start, args=(seed,)) for seed in ("11", "12")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {seed: r.returncode for seed, r in results.items()} == {"11": 0, "12": 0}
    dirs = run_dirs(tmp_path)
    assert {d.name for d in dirs} == {"same", "same-1"}
    for d in dirs:  # each folder holds one run's record and log, never a mix
        (seed,) = [a for a in (d / ".hydra" / "overrides.yaml").read_text().split() if a.startswith("seed=")]
        assert read_metrics(d)["status"] == "completed"
        log = (d / "mnist_lit.log").read_text()
        assert log.count("Seed set to") == 1 and f"Seed set to {seed.split('=')[1]}" in log


def test_parallel_sweep_jobs_write_into_their_own_folders(tmp_path: Path) -> None:
    # two jobs with identical overrides, run at the same time by the joblib launcher
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "optim.lr=0,0"]
    result = run_cli(*args, cwd=tmp_path)
    assert "all 2 jobs of the sweep failed" in result.stderr
    jobs = sorted(p.parent.name for p in (tmp_path / "outputs" / "sweeps").rglob("metrics.json"))
    assert jobs == ["0_optim.lr=0", "1_optim.lr=0"]


def test_parallel_sweeps_claim_distinct_folders(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from mnist_lit.rundir import RunDirectory

    def sweep_config() -> object:
        return OmegaConf.create(
            {"hydra": {"sweep": {"dir": str(tmp_path / "sweeps" / "s")}, "overrides": {"hydra": []}}}
        )

    configs = [sweep_config() for _ in range(4)]
    threads = [threading.Thread(target=RunDirectory().on_multirun_start, args=(c,)) for c in configs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    taken = {c.hydra.sweep.dir for c in configs}
    assert len(taken) == 4  # every sweep its own folder; jobs inside it are numbered apart
    for c in configs[1:]:
        if c.hydra.sweep.dir != str(tmp_path / "sweeps" / "s"):
            assert f"hydra.sweep.dir={c.hydra.sweep.dir}" in c.hydra.overrides.hydra
