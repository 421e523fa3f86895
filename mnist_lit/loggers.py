"""The run's loggers (the ``logger=`` group): TensorBoard as this package arranges it, Lightning's
CSV logger continued by a resume, and any other Lightning logger by its ``_target_`` (MLflow).

Every logger gets the same hyperparameters (``hparams_of``: what defines the run) and, through
Lightning, every scalar the run logs, the final ``val/acc_best``, ``test/acc`` and ``test/loss``
among them. TensorBoard also gets the image views, the per-class scalars (mnist_lit/callbacks.py)
and a Custom Scalars layout.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from mnist_lit.building import build, factory
from mnist_lit.callbacks import PER_CLASS
from mnist_lit.config import config_groups, group_options
from mnist_lit.events import tensorboard_tag

# the scalars every run reports in metrics.json and as TensorBoard's HParams metrics
FINAL_METRICS = ("val/acc_best", "test/acc", "test/loss")
# config blocks that are about what a run writes, not what it trains: never hyperparameters
OUTPUT_BLOCKS = ("inspect", "logger", "profiler")


def _exactly(*names: str) -> list[str]:
    """Custom Scalars regexes matching these metrics' TensorBoard tags and nothing else."""
    return [f"^{tensorboard_tag(n)}$" for n in names]


# TensorBoard's Custom Scalars tab: train and validation in one chart, per-class accuracy as one
# chart of ten lines per split (each entry a list of tag regexes)
LAYOUT = {
    "loss and accuracy": {
        "loss: train (epoch mean) and val": ["Multiline", _exactly("train/loss_epoch", "val/loss")],
        "accuracy: train and val": ["Multiline", _exactly("train/acc", "val/acc")],
        "learning rate": ["Multiline", _exactly("train/lr")],
    },
    "per-class accuracy": {
        f"{split}: one line per digit": ["Multiline", [rf"^{PER_CLASS}/{split}_acc_\d$"]]
        for split in ("val", "test")
    },
}


def build_loggers(cfg: DictConfig, out_dir: Path) -> list[Logger]:
    """The loggers ``logger=`` chose, each built from its ``_target_``; those that keep files per
    run keep them in the run folder (``save_dir``)."""
    return [
        build(f"logger.{name}", factory(f"logger.{name}", node), save_dir=str(out_dir))
        for name, node in (cfg.get("logger") or {}).items()
    ]


def hparams_of(cfg: DictConfig) -> dict[str, Any]:
    """What defines the run, flat: its group choices and every config value, less what changes
    neither what is trained nor what it measures.

    Those are the keys kept out of sweep job names (``hydra.job.config.override_dirname.exclude_keys``
    in conf/config.yaml: paths, speed switches, console settings) and OUTPUT_BLOCKS. Unset values
    are left out; lists become strings, as no logger takes them.
    """
    hydra = HydraConfig.get()
    skip = {*hydra.job.config.override_dirname.exclude_keys, *OUTPUT_BLOCKS}
    choices = hydra.runtime.choices
    flat: dict[str, Any] = {g: choices.get(g) for g in config_groups() if g not in skip}

    def walk(node: Any, key: str) -> None:
        if key in skip:
            return
        if isinstance(node, dict):
            for k, v in node.items():
                if not str(k).startswith("_"):
                    walk(v, f"{key}.{k}" if key else str(k))
        else:
            flat[key] = node if isinstance(node, (int, float, str, bool)) or node is None else str(node)

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return {k: v for k, v in flat.items() if v is not None}


class TensorBoard(TensorBoardLogger):
    """Lightning's TensorBoardLogger writing ``<run>/tb``, arranged for the person who opens it.

    - The train and val accuracy and loss curves lead with the metric (``acc/val``, ``loss/train``:
      mnist_lit/events.py tensorboard_tag), so the Scalars tab opens on them.
    - No ``epoch`` scalar: Lightning adds the epoch number to every logged row, and as a chart it
      sorts before ``train/`` and ``val/`` in the Scalars tab (CSV and MLflow keep it as a column).
    - HParams typed as the values are: torch's helper, which Lightning uses, turns booleans into
      0.0 and 1.0. Group choices list all their options; FINAL_METRICS are the metric columns; the
      keys the run's command line set (a sweep's swept keys among them) lead the table, which
      shows five at first.
    - The Custom Scalars tab (LAYOUT).
    """

    def __init__(self, save_dir: str, name: str = "tb", version: str = "", **kwargs: Any) -> None:
        super().__init__(save_dir, name=name, version=version, default_hp_metric=False, **kwargs)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        super().log_metrics({tensorboard_tag(k): v for k, v in metrics.items() if k != "epoch"}, step)

    @rank_zero_only
    def log_hyperparams(self, params: Any, metrics: Any = None) -> None:
        writer = self.experiment  # a SummaryWriter
        leading = {o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task}
        metrics = [tensorboard_tag(m) for m in FINAL_METRICS]
        for summary in hparams_summaries(dict(params), metrics, group_domains(params), leading):
            writer._get_file_writer().add_summary(summary)  # as Lightning's own log_hyperparams does
        writer.add_custom_scalars(LAYOUT)


def group_domains(params: Mapping[str, Any]) -> dict[str, list[str]]:
    """For each group choice among ``params``, every option the group has (HParams' filter lists them)."""
    return {g: group_options(g) for g in config_groups() if isinstance(params.get(g), str)}


def hparams_summaries(
    values: dict[str, Any], metrics: Sequence[str], domains: dict[str, list[str]], leading: set[str]
) -> list:
    """TensorBoard's HParams records for one run: the experiment (each value's name and type, and
    the metric tags) and the run's values. Types follow the values: bool, string or number.

    The ``leading`` names are marked as differing between runs, which is how TensorBoard picks the
    columns it lists first (then by name).
    """
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2, summary_v2

    infos = []
    for name, value in values.items():
        kind = {bool: api_pb2.DATA_TYPE_BOOL, str: api_pb2.DATA_TYPE_STRING}.get(type(value))
        info = api_pb2.HParamInfo(name=name, type=kind or api_pb2.DATA_TYPE_FLOAT64, differs=name in leading)
        if name in domains:
            info.domain_discrete.extend(domains[name])
        infos.append(info)
    experiment = api_pb2.Experiment(
        hparam_infos=infos, metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=m)) for m in metrics]
    )
    content = metadata.create_summary_metadata(plugin_data_pb2.HParamsPluginData(experiment=experiment))
    header = Summary(value=[Summary.Value(tag=metadata.EXPERIMENT_TAG, metadata=content)])
    return [header, summary_v2.hparams_pb(values)]  # the values, typed by TensorBoard's own helper


class _ContinuedWriter(ExperimentWriter):
    """Lightning's CSV writer, except that a metrics.csv already in the folder (a resumed run's)
    is continued with its columns, where Lightning's warns and deletes it."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = next(csv.reader(file), [])


class CSV(CSVLogger):
    """Lightning's CSVLogger writing ``<run>/csv/metrics.csv`` and ``hparams.yaml``; a resumed run
    adds its rows to the file its first stretch wrote."""

    def __init__(self, save_dir: str, name: str = "csv", version: str = "", **kwargs: Any) -> None:
        super().__init__(save_dir, name=name, version=version, **kwargs)

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuedWriter(log_dir=self.log_dir)
        return self._experiment
