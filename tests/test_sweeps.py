"""Multiruns as a user runs them: results table, failed jobs, joblib, Optuna, SLURM config, submitit's
local executor, CPU DDP."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
from conftest import TINY, WARNING_LINE, read_metrics, run_cli, run_dirs
from hydra import compose
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mnist_lit.report import build_report
from mnist_lit.report import main as report_main
from mnist_lit.sweep import job_dirname
from mnist_lit.threads import available_cores

# TINY with even fewer batches: these tests check the sweep machinery, not learning
QUICK = [*TINY, "trainer.limit_train_batches=8", "threads=1", "inspect.enabled=false"]


def sweep(cwd: Path, mnist_root: Path, *args: str, timeout: float = 300):
    """``python -m mnist_lit -m ARGS`` into cwd/sweep; returns the finished process and the sweep dir."""
    out = cwd / "outputs" / "sweep"
    proc = run_cli(
        "-m", *args, *QUICK, f"hydra.sweep.dir={out}", cwd=cwd, mnist_root=mnist_root, timeout=timeout
    )
    return proc, out


def table_rows(sweep_dir: Path) -> list[dict[str, str]]:
    with open(sweep_dir / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_two_job_sweep_writes_jobs_and_table(tmp_path: Path, mnist_root: Path) -> None:
    proc, out = sweep(tmp_path, mnist_root, "optim.lr=0.001,0.01")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = run_dirs(tmp_path)
    assert [j.parent for j in jobs] == [out, out]
    # each job's folder says its number and what it changed
    assert jobs[0].name.startswith("0_") and "optim.lr=0.001" in jobs[0].name
    assert jobs[1].name.startswith("1_") and "optim.lr=0.01" in jobs[1].name
    assert "threads" not in jobs[0].name
    metrics = [read_metrics(j) for j in jobs]
    assert all(m["status"] == "completed" and 0 <= m["val/acc_best"] <= 1 for m in metrics)

    rows = table_rows(out)
    assert len(rows) == 2 and {r["optim.lr"] for r in rows} == {"0.001", "0.01"}
    best = [float(r["val/acc_best"]) for r in rows]
    assert best == sorted(best, reverse=True)  # best first
    for row in rows:
        m = read_metrics(out / row["dir"])
        assert math.isclose(float(row["test/acc"]), m["test/acc"], abs_tol=1e-6)
        assert row["status"] == "completed" and row["epochs"] == "1"
    md = (out / "results.md").read_text()
    assert md.count("| completed |") == 2 and md in proc.stdout  # printed at the end of the sweep
    # tensorboard --logdir on the sweep finds every job's HParams entry
    assert len(list(out.glob("*/tb/events.out.tfevents.*"))) >= 2

    # the table is rebuilt from the job folders alone
    (out / "results.md").unlink()
    (out / "results.csv").unlink()
    assert report_main([str(out)]) == 0
    assert (out / "results.md").read_text() == md


def test_failed_jobs_are_recorded_and_the_sweep_goes_on(tmp_path: Path, mnist_root: Path) -> None:
    # job 1: a NaN learning rate (rejected by the config check); job 2: loss becomes NaN in training
    proc, out = sweep(tmp_path, mnist_root, "optim=sgd", "sched=constant", "optim.lr=0.05,nan,1e12")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["optim.lr"]: r for r in table_rows(out)}
    assert rows["0.05"]["status"] == "completed"
    assert rows["nan"]["status"] == "failed" and "optim.lr=nan" in rows["nan"]["reason"]
    diverged = rows["1000000000000.0"]
    assert diverged["status"] == "failed" and "loss became" in diverged["reason"]
    assert "\n" not in diverged["reason"]
    m = read_metrics(out / diverged["dir"])
    assert m["status"] == "failed" and m["stopped_as"] == "diverged" and m["reason"] == diverged["reason"]
    assert list(table_rows(out)[0].values())[0] == rows["0.05"]["job"]  # the completed job ranks first
    assert "1 completed, 2 failed" in proc.stdout


def test_sweep_exits_nonzero_only_when_every_job_failed(tmp_path: Path) -> None:
    proc, out = sweep(tmp_path, tmp_path / "no-data", "optim.lr=nan,-1")
    assert proc.returncode != 0
    assert "all 2 jobs of the sweep failed" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert [r["status"] for r in table_rows(out)] == ["failed", "failed"]


def test_joblib_refuses_zero_parallel_jobs(tmp_path: Path) -> None:
    proc = run_cli(
        "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=0", "optim.lr=0.01,0.02", cwd=tmp_path
    )
    assert proc.returncode == 2
    assert "hydra.launcher.n_jobs=0 is not allowed" in proc.stderr and "Traceback" not in proc.stderr
    assert run_dirs(tmp_path) == []


def test_job_folder_names_stay_short_and_readable() -> None:
    drawn = "optim.lr=0.07488900510447863,optim.weight_decay=1.2345678e-05,data.augment.scale=[0.9,1.1]"
    assert job_dirname(drawn) == "optim.lr=0.07489,optim.weight_decay=1.235e-05,data.augment.scale=[0.9,1.1]"
    assert job_dirname("seed=1,optim.lr=0.01") == "seed=1,optim.lr=0.01"
    long = ",".join(f"key{i}=value{i}" for i in range(60))
    assert len(job_dirname(long)) == 200 and job_dirname(long).startswith("key0=value0,")


def test_report_command_explains_a_wrong_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert report_main([str(tmp_path / "missing")]) == 2
    assert report_main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "holds no job directories" in err
    assert build_report(tmp_path) is None


def test_joblib_launcher_runs_jobs_side_by_side(tmp_path: Path, mnist_root: Path) -> None:
    out = tmp_path / "outputs" / "sweep"
    proc = run_cli(
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "seed=1,2",
        *[a for a in QUICK if not a.startswith("threads=")],  # threads from the cores and n_jobs
        f"hydra.sweep.dir={out}",
        cwd=tmp_path,
        mnist_root=mnist_root,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib.Parallel" in proc.stdout + proc.stderr  # Hydra's joblib launcher ran them
    rows = table_rows(out)
    assert sorted(r["seed"] for r in rows) == ["1", "2"]
    threads = {read_metrics(out / r["dir"])["torch_threads"] for r in rows}
    assert threads == {max(1, available_cores() // 2)}  # 2 jobs x threads <= cores


def test_optuna_preset_runs_trials(tmp_path: Path, mnist_root: Path) -> None:
    proc, out = sweep(tmp_path, mnist_root, "hparams_search=optuna", "hydra.sweeper.n_trials=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = table_rows(out)
    assert len(rows) == 2
    searched = {"optim", "sched", "optim.lr", "optim.weight_decay", "data.batch_size"}
    for row in rows:  # every trial drew a value for every searched key
        assert searched <= {o.split("=")[0] for o in row["overrides"].split()}
    # each trial handed its val/acc_best back to Optuna, which kept the best
    best = OmegaConf.load(out / "optimization_results.yaml")
    assert set(best.best_params) == searched
    top = max(float(r["val/acc_best"]) for r in rows if r["status"] == "completed")
    assert math.isclose(best.best_value, top, abs_tol=1e-6)


def test_slurm_launcher_and_ddp_compose(hydra_conf: None) -> None:
    cfg = compose(
        config_name="config",
        overrides=[
            "hydra/launcher=slurm",
            "accelerator=ddp",
            "trainer.devices=4",
            "hydra.launcher.partition=gpu",
        ],
        return_hydra_config=True,
    )
    launcher = instantiate(cfg.hydra.launcher)  # what Hydra builds; submitting needs a real cluster
    assert type(launcher).__name__ == "SlurmLauncher"
    params = launcher.params
    assert (params["tasks_per_node"], params["gpus_per_node"], params["partition"]) == (4, 4, "gpu")
    assert params["submitit_folder"].endswith(".submitit/%j")
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.accelerator == "gpu"
    joblib = compose(config_name="config", overrides=["hydra/launcher=joblib"], return_hydra_config=True)
    assert joblib.hydra.launcher._target_.endswith("JoblibLauncher")


def test_submitit_local_runs_the_sweep_as_cluster_jobs(tmp_path: Path, mnist_root: Path) -> None:
    # SLURM's path without a cluster: each job pickled, run by submitit in its own process, its
    # result pickled back and collected by the launcher
    proc, out = sweep(tmp_path, mnist_root, "hydra/launcher=submitit_local", "seed=1,2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Submitit 'local' sweep output dir" in proc.stdout + proc.stderr
    rows = table_rows(out)
    assert sorted(r["seed"] for r in rows) == ["1", "2"]
    for row in rows:
        m = read_metrics(out / row["dir"])
        assert row["status"] == m["status"] == "completed" and m["epochs"] == 1
        assert math.isclose(float(row["test/acc"]), m["test/acc"], abs_tol=1e-6)
    md = (out / "results.md").read_text()
    assert md.count("| completed |") == 2 and md in proc.stdout
    submitted = sorted(out.glob(".submitit/*/*_submitted.pkl"))  # .submitit/<job id>/, one per job
    assert len(submitted) == 2
    for pickled in submitted:
        job = pickled.parent
        assert len(list(job.glob("*_result.pkl"))) == 1
        logs = "".join(p.read_text() for p in job.glob("*_log.*"))
        assert "Job completed successfully" in logs, logs[-3000:]
        assert not WARNING_LINE.search(logs), logs[-3000:]  # a job's console is as quiet as a run's


def test_ddp_on_two_cpu_processes(tmp_path: Path, mnist_root: Path) -> None:
    proc = run_cli(
        "accelerator=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        *QUICK,
        cwd=tmp_path,
        mnist_root=mnist_root,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Starting with 2 processes" in proc.stdout + proc.stderr
    runs = [p for p in (tmp_path / "outputs").rglob("*") if p.is_dir() and p.parent.parent.name == "runs"]
    assert len(runs) == 1, runs  # rank 1 works in rank 0's folder
    assert [p.parent for p in (tmp_path / "outputs").rglob("metrics.json")] == runs
    m = read_metrics(runs[0])
    assert m["status"] == "completed" and m["global_steps"] == 8
    assert (runs[0] / "train_ddp_process_1.log").is_file()
