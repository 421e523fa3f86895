"""The debug= presets do what their names say, and their runs stay apart from real ones."""

from __future__ import annotations

from pathlib import Path

from conftest import TINY, read_metrics, run_cli, run_dirs

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "threads=1"]


def debug_run(cwd: Path, mnist_root: Path, *args: str) -> tuple[Path, str]:
    """``python -m mnist_lit ARGS``, which must succeed: its one run folder (in outputs/debug), its output."""
    proc = run_cli(*args, *QUIET, cwd=cwd, mnist_root=mnist_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(cwd)
    assert run.relative_to(cwd / "outputs").parts[:2] == ("debug", "runs")
    return run, proc.stdout + proc.stderr


def test_fdr_runs_one_batch_of_each_split_and_logs_nothing(tmp_path: Path, mnist_root: Path) -> None:
    run, _ = debug_run(tmp_path, mnist_root, "debug=fdr")
    metrics = read_metrics(run)
    assert metrics["debug"] == "fdr" and metrics["status"] == "completed"
    assert metrics["global_steps"] == 1 and metrics["epochs"] == 1
    assert 0 <= metrics["test/acc"] <= 1 and metrics["best_checkpoint"] is None  # tested, on one batch
    assert not list(run.glob("checkpoints/epoch=*")) and not list(run.rglob("events.out.tfevents.*"))


def test_limit_sweep_is_a_few_batches_and_stays_out_of_real_sweeps(tmp_path: Path, mnist_root: Path) -> None:
    proc = run_cli("-m", "debug=limit", "seed=1,2", *QUIET, cwd=tmp_path, mnist_root=mnist_root, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = run_dirs(tmp_path)
    assert len(jobs) == 2
    (sweep,) = {j.parent for j in jobs}
    assert sweep.relative_to(tmp_path / "outputs").parts[:2] == ("debug", "sweeps")
    assert (sweep / "results.md").read_text().count("| completed |") == 2  # the debug sweep's own table
    for job in jobs:
        metrics = read_metrics(job)
        assert metrics["debug"] == "limit" and (metrics["epochs"], metrics["global_steps"]) == (3, 30)
        assert (job / "checkpoints" / "last.ckpt").is_file() and list(job.glob("tb/events.out.tfevents.*"))
    # a later resume of "the last run" never picks a debug run
    resume = run_cli("ckpt_path=last", cwd=tmp_path)
    assert resume.returncode == 2 and "outside debug/" in resume.stderr, resume.stderr


def test_overfit_reaches_full_training_accuracy(tmp_path: Path, mnist_root: Path) -> None:
    run, output = debug_run(tmp_path, mnist_root, "debug=overfit")
    metrics = read_metrics(run)
    assert metrics["debug"] == "overfit" and metrics["train/acc"] == 1.0
    assert metrics["epochs"] < 60  # stopped on reaching it, before max_epochs
    assert metrics["global_steps"] == 4 * metrics["epochs"]  # the same 4 batches each epoch
    assert "train/acc 1.0000" in output


def test_profiler_writes_its_report_and_prints_the_slowest(tmp_path: Path, mnist_root: Path) -> None:
    few = [a for a in TINY if not a.startswith("trainer.max_epochs")]
    run, output = debug_run(tmp_path, mnist_root, "debug=profiler", *few)
    report = (run / "fit-profiler.txt").read_text()
    assert "FIT Profiler Report" in report and "run_training_batch" in report
    assert (run / "test-profiler.txt").is_file()
    assert "profile of fit: the 10 slowest" in output and "run_training_epoch" in output
    assert read_metrics(run)["debug"] == "profiler"
