"""The logger= group, read back with each logger's own reader: TensorBoard's event reader (scalars,
typed HParams, the Custom Scalars layout), Python's csv, MLflow's client (when the extra is in)."""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY, read_metrics, run_cli, run_dirs
from hydra import compose

from mnist_lit.callbacks import PER_CLASS
from mnist_lit.config import check_config
from mnist_lit.events import tensorboard_tag
from mnist_lit.loggers import FINAL_METRICS

HAS_MLFLOW = importlib.util.find_spec("mlflow") is not None
# a sweep through every logger at once (MLflow too when it is installed): each job is a run
LOGGERS = "logger=many" if HAS_MLFLOW else "logger=[tensorboard,csv]"
QUICK = [*TINY, "trainer.limit_train_batches=8", "trainer.log_every_n_steps=2", "threads=1"]
# what must never be a hyperparameter: paths, speed switches, views, loggers, the console
NOT_HPARAMS = ("data.root", "ckpt_path", "threads", "channels_last", "compile", "steps_per_call")
NOT_HPARAMS += ("progress_every", "trainer.enable_progress_bar", "inspect.", "logger")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> tuple[Path, list[Path], str]:
    """Two jobs (SGD with two learning rates) logging to every logger; the sweep's dir, jobs, output."""
    cwd = tmp_path_factory.mktemp("loggers")
    out = cwd / "outputs" / "sweep"
    proc = run_cli(
        "-m", LOGGERS, "optim=sgd", "optim.lr=0.01,0.05", *QUICK, f"hydra.sweep.dir={out}",
        cwd=cwd, mnist_root=mnist_root, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = run_dirs(cwd)
    assert len(jobs) == 2 and (out / "results.md").read_text().count("| completed |") == 2
    return cwd, jobs, proc.stdout + proc.stderr


def tensorboard(job: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(job / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def hparams_of_events(job: Path):
    from tensorboard.plugins.hparams import metadata

    content = tensorboard(job).PluginTagToContent(metadata.PLUGIN_NAME)
    experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    return experiment, start


def test_tensorboard_leads_with_train_and_val(sweep) -> None:
    _, jobs, output = sweep
    assert "GPU available: False, used: False" in output  # accelerator=auto, the default, on this CPU
    tags = set(tensorboard(jobs[0]).Tags()["scalars"])
    logged = {
        "train/loss_step",
        "train/loss_epoch",
        "train/acc",
        "train/lr",
        "val/loss",
        "val/acc",
        *FINAL_METRICS,
    }
    assert {tensorboard_tag(m) for m in logged} <= tags
    assert {"acc/train", "acc/val", "loss/train", "loss/val", "train/loss_step", "train/lr"} <= tags
    assert {f"{PER_CLASS}/{s}_acc_{d}" for s in ("val", "test") for d in range(10)} <= tags
    assert "epoch" not in tags  # a chart that would sort first
    # TensorBoard orders tag groups by name and opens the first two: accuracy and loss, each with
    # its train and val charts only; the rest follow, closed
    groups = sorted({t.split("/")[0] for t in tags})
    assert groups == ["acc", "loss", PER_CLASS, "test", "train", "val"]
    assert {t for t in tags if t.startswith(("acc/", "loss/"))} == {
        "acc/train",
        "acc/val",
        "loss/train",
        "loss/val",
    }


def test_custom_scalars_layout_draws_logged_tags(sweep) -> None:
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    _, jobs, _ = sweep
    acc = tensorboard(jobs[0])
    tags = acc.Tags()["scalars"]
    layout = layout_pb2.Layout()
    layout.ParseFromString(acc.Tensors(metadata.CONFIG_SUMMARY_TAG)[0].tensor_proto.string_val[0])
    charts = {c.title: c for category in layout.category for c in category.chart}
    assert list(charts)[:2] == ["loss: train (epoch mean) and val", "accuracy: train and val"]
    for title, chart in charts.items():  # each line regex matches what the run logged
        drawn = [t for t in tags if any(re.search(r, t) for r in chart.multiline.tag)]
        assert len(drawn) == (10 if "digit" in title else len(chart.multiline.tag)), (title, drawn)


def test_hparams_are_typed_and_define_the_run(sweep) -> None:
    from tensorboard.plugins.hparams import api_pb2

    _, jobs, _ = sweep
    experiment, start = hparams_of_events(jobs[1])
    assert [m.name.tag for m in experiment.metric_infos] == list(FINAL_METRICS)
    assert set(FINAL_METRICS) <= set(tensorboard(jobs[1]).Tags()["scalars"])  # the columns have values
    infos = {h.name: h for h in experiment.hparam_infos}
    assert set(infos) == set(start.hparams)
    for name in infos:
        assert not name.startswith(NOT_HPARAMS), name
    types = {n: api_pb2.DataType.Name(h.type) for n, h in infos.items()}
    assert types["data.augment.enabled"] == types["optim.nesterov"] == "DATA_TYPE_BOOL"
    assert start.hparams["optim.nesterov"].bool_value is False
    assert types["optim.lr"] == types["data.batch_size"] == "DATA_TYPE_FLOAT64"
    assert start.hparams["optim.lr"].number_value == 0.05
    assert types["model"] == types["optim"] == types["model.activation"] == "DATA_TYPE_STRING"
    assert start.hparams["optim"].string_value == "sgd"
    assert "adam" in infos["optim"].domain_discrete and "resnet" in infos["model"].domain_discrete
    # what the command line set leads TensorBoard's table (it sorts differing ones first)
    leading = {n for n, h in infos.items() if h.differs}
    assert {"optim", "optim.lr", "trainer.max_epochs"} <= leading and "threads" not in leading
    assert "seed" not in leading


def test_csv_has_every_epoch_and_the_final_metrics(sweep) -> None:
    _, jobs, _ = sweep
    for job in jobs:
        with open(job / "csv" / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert {"epoch", "step", "train/acc", "val/acc", "val/acc_best", *FINAL_METRICS} <= set(rows[0])
        tested = [r for r in rows if r["test/acc"]]
        assert len(tested) == 1
        assert math.isclose(float(tested[0]["test/acc"]), read_metrics(job)["test/acc"], rel_tol=1e-6)
        assert sum(1 for r in rows if r["train/loss_step"]) == 4  # every 2 of 8 steps
        # every logger gets the same hyperparameters
        _, start = hparams_of_events(job)
        assert set(yaml.safe_load((job / "csv" / "hparams.yaml").read_text())) == set(start.hparams)


@pytest.mark.skipif(not HAS_MLFLOW, reason="the mlflow extra is not installed")
def test_mlflow_store_holds_each_job_as_a_run(sweep) -> None:
    from mlflow.tracking import MlflowClient

    cwd, jobs, _ = sweep
    client = MlflowClient(f"sqlite:///{cwd / 'outputs' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("mnist_lit").experiment_id])
    by_dir = {r.data.tags["run_dir"]: r for r in runs}
    assert set(by_dir) == {str(j) for j in jobs}
    for job in jobs:
        run = by_dir[str(job)]
        metrics = read_metrics(job)
        assert run.info.status == "FINISHED"
        for name in FINAL_METRICS:
            assert math.isclose(run.data.metrics[name], metrics[name], rel_tol=1e-6)
        _, start = hparams_of_events(job)
        assert set(run.data.params) == set(start.hparams)
        assert run.data.params["optim"] == "sgd"


def test_a_resumed_run_continues_its_metrics_csv(tmp_path: Path, mnist_root: Path) -> None:
    args = ["logger=csv", "sched=steplr", *QUICK]
    first = run_cli(*args, cwd=tmp_path, mnist_root=mnist_root)
    assert first.returncode == 0, first.stderr[-3000:]
    (run,) = run_dirs(tmp_path)
    more = run_cli(*args, "trainer.max_epochs=2", f"ckpt_path={run}", cwd=tmp_path, mnist_root=mnist_root)
    assert more.returncode == 0, more.stderr[-3000:]
    assert not (run / "tb").exists()  # logger=csv alone
    with open(run / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted({r["epoch"] for r in rows if r["train/acc"]}) == ["0", "1"]  # both stretches' epochs
    assert sum(1 for r in rows if r["test/acc"]) == 2  # each stretch was tested


@pytest.mark.parametrize("option", ["tensorboard", "csv", "mlflow", "many", "[tensorboard,csv]"])
def test_every_logger_option_composes(hydra_conf: None, option: str) -> None:
    if "mlflow" in option or option == "many":
        pytest.importorskip("mlflow")
    cfg = compose(config_name="config", overrides=[f"logger={option}"])
    check_config(cfg)
    expected = {"many": {"tensorboard", "csv", "mlflow"}, "[tensorboard,csv]": {"tensorboard", "csv"}}
    assert set(cfg.logger) == expected.get(option, {option})
    assert compose(config_name="config").trainer.accelerator == "auto"  # the GPU when there is one


def test_mlflow_without_its_extra_is_one_line(tmp_path: Path) -> None:
    site = tmp_path / "site"  # as if mlflow were not installed: import mlflow fails, find_spec says None
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['mlflow'] = None\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run(
        [sys.executable, "-m", "mnist_lit", "logger=many"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error: logger mlflow needs mlflow, an optional extra")
    assert "pip install 'mnist-lit[mlflow]'" in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert not (tmp_path / "outputs").exists()
