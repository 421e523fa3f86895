"""One training run, top to bottom: data -> model -> trainer -> fit -> test -> metrics.json."""

from __future__ import annotations

import functools
import logging
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from copy import deepcopy
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    WeightAveraging,
)
from omegaconf import DictConfig, OmegaConf

from mnist_lit import averaging, steps_per_call
from mnist_lit.building import build, factory, reason
from mnist_lit.callbacks import from_config as inspection
from mnist_lit.checkpoint import check_resume
from mnist_lit.console import BatchProgressBar, ModelTable
from mnist_lit.devices import check_gpu
from mnist_lit.errors import UserError
from mnist_lit.guards import (
    Diverged,
    GracefulStop,
    checkpoint_bytes,
    guard_callbacks,
    stopped_run,
)
from mnist_lit.loggers import build_loggers, hparams_of
from mnist_lit.module import Classifier
from mnist_lit.perf import EpochTimer, FairThreads
from mnist_lit.record import update_metrics
from mnist_lit.rundir import LAST_CKPT, check_room, find_checkpoint, training_began
from mnist_lit.threads import job_threads

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train, validate every epoch, test the best (or last) checkpoint; return what metrics.json holds."""
    start = time.perf_counter()
    route_lightning_logs()
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    check_gpu("trainer.accelerator", cfg.trainer.accelerator, cfg.trainer.devices, loaded=True)
    quiet_cuda_probe(cfg)
    # threads=N, or the joblib launcher's share of the cores; else what other programs leave free
    threads = job_threads(cfg.threads)
    if threads:
        torch.set_num_threads(threads)
    L.seed_everything(cfg.seed, workers=True)

    # steps_per_call > 1: several batches per training step (mnist_lit/steps_per_call.py)
    grouping = steps_per_call.plan(cfg, OmegaConf.to_container(cfg.trainer, resolve=True))
    trainer_args = grouping.trainer_args
    datamodule = build("data", factory("data", cfg.data), **grouping.data_args)
    model = build_model(cfg, grouping.model_class, **grouping.model_args)
    ckpt_path = str(find_checkpoint(str(cfg.ckpt_path))) if cfg.ckpt_path else None
    # now, not after an hour of training; an averaged run's checkpoints hold a second copy of the weights
    slots = 3 if OmegaConf.select(cfg, "ema.enabled", default=False) else 2
    check_room(out_dir, "output directory", 3 * checkpoint_bytes(model, optimizer_slots=slots))
    stop = GracefulStop()
    loggers = build_loggers(cfg, out_dir)
    profiler = build_profiler(cfg, out_dir)
    if profiler is not None:
        trainer_args["profiler"] = profiler
    checkpoint = ModelCheckpoint(
        dirpath=out_dir / "checkpoints",
        filename="epoch={epoch:03d}-val_acc={val/acc:.4f}",
        auto_insert_metric_name=False,
        monitor="val/acc",
        mode="max",
    )
    # last.ckpt at the end of every epoch: since Lightning 2.6 save_last=True writes it only when a
    # best checkpoint is written too, so an epoch that is not the best would leave it an epoch behind
    last = ModelCheckpoint(
        dirpath=out_dir / "checkpoints",
        filename=Path(LAST_CKPT).stem,
        enable_version_counter=False,
        monitor=None,
        save_top_k=1,
    )
    timer = EpochTimer()
    bar = [BatchProgressBar(cfg.progress_every)] if cfg.trainer.enable_progress_bar else []
    summary = [ModelTable()] if trainer_args.pop("enable_model_summary", True) else []
    trainer = build(
        "trainer",
        functools.partial(L.Trainer, **trainer_args, enable_model_summary=False),  # ModelTable is the summary
        default_root_dir=str(out_dir),
        logger=loggers,
        callbacks=[
            checkpoint,
            last,  # after the best one, so that last.ckpt holds the best's state as of this epoch
            *([LearningRateMonitor(logging_interval="step")] if loggers else []),
            timer,
            *bar,
            *summary,
            *extra_callbacks(cfg),
            *([] if threads else [FairThreads()]),
            *guard_callbacks(out_dir, stop),
            *grouping.callbacks,
        ],
    )
    hparams = hparams_of(cfg)
    for logger in trainer.loggers:  # under fast_dev_run, Lightning's stand-in that logs nothing
        logger.log_hyperparams(hparams)

    if ckpt_path:  # weights only, and of this architecture, before Lightning unpickles it
        check_resume(ckpt_path, model.backbone, OmegaConf.to_container(cfg.model, resolve=True))
    with stop.handling_signals():
        try:
            with refused_at_start():
                trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
            metrics = scalars(trainer, "val/acc_best", "train/acc")
            best = checkpoint.best_model_path or None
            tested = (last.best_model_path or None) if cfg.get("test_checkpoint") == "last" else best
            trainer.test(model, datamodule=datamodule, ckpt_path=tested)
        except (KeyboardInterrupt, SystemExit, Diverged) as err:  # Ctrl-C, SIGTERM, NaN loss
            if not training_began():
                raise  # stopped while starting: nothing to save, the folder goes back as it was
            metrics = {**stopped_run(trainer, stop, err, out_dir), **debug_mark()}
            if trainer.is_global_zero:
                update_metrics(out_dir, metrics, time.perf_counter() - start)
            if isinstance(err, Diverged):
                raise
            raise SystemExit(stop.exit_code) from None
    metrics.update(scalars(trainer, "test/acc", "test/loss"))
    metrics.update(
        status="completed",
        epochs=trainer.current_epoch,
        global_steps=trainer.global_step,
        torch_threads=torch.get_num_threads(),
        steps_per_call=grouping.steps,
        timing=timer.summary(),
        best_checkpoint=best,
        tested_checkpoint=tested,
        params=sum(p.numel() for p in model.parameters()),
    )
    metrics.update(debug_mark())
    if trainer.is_global_zero:  # one file, however many DDP processes ran
        metrics = update_metrics(out_dir, metrics, time.perf_counter() - start)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # else gloo's threads may abort noisily at exit
    if profiler is not None:
        print_profile(out_dir)
    log.info(
        "test/acc %.4f  val/acc_best %.4f  train/acc %.4f  (%s)",
        metrics.get("test/acc", float("nan")),
        metrics.get("val/acc_best", float("nan")),
        metrics.get("train/acc", float("nan")),
        out_dir,
    )
    return metrics


def debug_mark() -> dict[str, str]:
    """``{"debug": PRESET}`` for a run of a debug preset: a check, not a result (conf/debug/default.yaml)."""
    debug = HydraConfig.get().runtime.choices.get("debug")
    return {"debug": debug} if debug else {}


def build_profiler(cfg: DictConfig, out_dir: Path) -> Any:
    """The Lightning profiler ``profiler:`` configures (debug=profiler), writing into the run folder."""
    node = cfg.get("profiler")
    return build("profiler", factory("profiler", node), dirpath=str(out_dir)) if node else None


def print_profile(out_dir: Path, rows: int = 10) -> None:
    """The slowest actions of the profiler's report of fit, one short line each (the whole report,
    every action and its calls, stays in the file)."""
    report = next(iter(sorted(out_dir.glob("fit-*.txt"))), None)
    if report is None:  # a profiler that writes its report elsewhere
        return
    table = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in report.read_text().splitlines()
        if line.startswith("|")
    ]
    actions = [r for r in table if len(r) == 5 and r[0] not in ("Action", "Total")]
    if not actions:  # another profiler's report (AdvancedProfiler's is cProfile's, per action by name)
        log.info("profile of fit: %s", report)
        return
    total = next((r[3] for r in table if r and r[0] == "Total"), "?")
    lines = [
        f"{float(pct):5.1f}%  {float(secs):8.3f} s  {calls:>6} calls  {name[:90]}"
        for name, _, calls, secs, pct in actions
    ]
    log.info(
        "profile of fit: the %d slowest of %d actions, %s s in all (every one: %s)\n%s",
        min(rows, len(actions)),
        len(actions),
        total,
        report,
        "\n".join(lines[:rows]),
    )


def scalars(trainer: L.Trainer, *names: str) -> dict[str, float]:
    return {n: float(trainer.callback_metrics[n]) for n in names if n in trainer.callback_metrics}


def route_lightning_logs() -> None:
    """Let Lightning's messages reach Hydra's console and log-file handlers once, not twice.

    Also drops messages that say nothing about the run: Lightning's advertisement for its
    cloud logger, and the two warnings it gives every fresh ``fit`` when an OnExceptionCheckpoint
    (the interruption checkpoint, mnist_lit/guards.py) is present: it then looks for a "last"
    checkpoint to resume, which a new run folder never has (a resume passes its own ckpt_path).
    """
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("lightning"):
            logging.getLogger(name).handlers.clear()
            logging.getLogger(name).propagate = True
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _NoAdverts) for f in rank_zero.filters):
        rank_zero.addFilter(_NoAdverts())
    warnings.filterwarnings("ignore", message=r"`\.fit\(ckpt_path=None\)` was called without a model")
    warnings.filterwarnings("ignore", message=r'\.fit\(ckpt_path="last"\) is set, but there is no last')
    # Lightning 2.6 on torch 2.15 asks a deprecated pytree question on every fit; nothing to act on
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # Lightning counts training steps, which with steps_per_call are groups of batches; the package
    # logs per optimizer step (every log_every_n_steps batches), so its advice does not apply
    warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than")
    # weight averaging (ema.enabled, or one under callbacks.) warns when a checkpoint is loaded outside
    # fit by a trainer whose callback holds no average; the module then holds the checkpoint's
    # state_dict, which is the average: testing or evaluating it uses the average, as meant
    warnings.filterwarnings("ignore", message=r"You're using the WeightAveraging callback, but loading")
    # a resumed run's checkpoints folder holds its earlier checkpoints (a new run's is always empty)
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")


class _NoAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # the advert, and the end of fit (printed into the last progress bar line), which the log says
        return not str(record.msg).startswith(("💡 Tip", "`Trainer.fit` stopped"))


def build_model(cfg: DictConfig, model_class: type[Classifier] = Classifier, **model_args: Any) -> Classifier:
    """The chosen backbone inside the generic Classifier, with its optimizer and schedule.

    The optimizer and schedule are built once here on the backbone, so that a value torch refuses
    is reported now, before any data is loaded; the Classifier builds its own when training starts.
    """
    backbone = build("model", factory("model", cfg.model))
    optimizer = factory("optim", cfg.optim)
    scheduler = factory("sched.scheduler", cfg.sched.scheduler)
    with torch.random.fork_rng(devices=[]):  # the run's random numbers stay as they were
        rehearse(backbone, optimizer, scheduler, cfg.sched.interval)
    return model_class(
        backbone=backbone,
        optimizer=optimizer,
        scheduler=scheduler,
        interval=cfg.sched.interval,
        config=OmegaConf.to_container(cfg, resolve=True),
        channels_last=bool(cfg.get("channels_last", False)),
        compile=bool(cfg.get("compile", False)),
        label_smoothing=float(cfg.get("label_smoothing", 0.0)),
        **model_args,
    )


def rehearse(backbone: torch.nn.Module, optimizer: Any, scheduler: Any, interval: str) -> None:
    """One optimizer and schedule step on a copy of the backbone: torch checks some optimizer
    arguments only when it steps (SGD's ``dampening``), so this is where they are refused."""
    copy = deepcopy(backbone)
    images = torch.zeros(2, 1, 28, 28)

    def step(opt: torch.optim.Optimizer) -> None:
        opt.zero_grad()
        copy(images).float().logsumexp(dim=1).mean().backward()
        opt.step()

    def two_steps(opt: torch.optim.Optimizer) -> None:  # momentum buffers are used from the second
        step(opt)
        step(opt)

    opt = build("optim", optimizer, list(copy.parameters()), then=two_steps)

    def scheduled_step(sched: torch.optim.lr_scheduler.LRScheduler) -> None:
        step(opt)
        sched.step()

    sizes = {"total_steps": 100, "steps_per_epoch": 10} if interval == "step" else {}
    build("sched.scheduler", scheduler, opt, **sizes, then=scheduled_step)


@contextmanager
def refused_at_start() -> Iterator[None]:
    """Lightning checks some Trainer values only when fit starts: a refusal there is a config error."""
    try:
        yield
    except MisconfigurationException as err:
        if training_began():
            raise
        raise UserError(f"trainer: {reason(err)}") from err


def quiet_cuda_probe(cfg: DictConfig) -> None:
    """When the run will not use CUDA, let torch answer "is CUDA available?" from its cache.

    Lightning asks torch to check CUDA through NVML (so that a forked process can still use it).
    Until CUDA is initialised torch does not cache that answer, so on a machine without a GPU
    every check, and every optimizer step makes one, costs about 40 us (1% of a twoconv step).
    """
    accelerator = cfg.trainer.get("accelerator")
    if accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available()):
        os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)


def extra_callbacks(cfg: DictConfig) -> list[Callback]:
    """The configured callbacks: inspection views, the weight average, ``callbacks.*``, early stopping.

    The average comes after the inspection views: callbacks run in this order, so the views drawn
    at the end of a validation see the averaged weights it validated, before they are swapped back.
    """
    callbacks: list[Callback] = [*inspection(cfg.get("inspect")), *averaging.from_config(cfg.get("ema"))]
    for name, node in (cfg.get("callbacks") or {}).items():  # any Lightning callback, by its _target_
        callbacks.append(build(f"callbacks.{name}", factory(f"callbacks.{name}", node)))
    averages = [type(c).__name__ for c in callbacks if isinstance(c, WeightAveraging)]
    if len(averages) > 1:  # each would swap its own average in and out of the same weights
        raise UserError(
            f"more than one weight average ({', '.join(averages)}): use ema.enabled=true or one "
            "WeightAveraging under callbacks., not both"
        )
    es = cfg.early_stopping
    if es.enabled:
        settings = OmegaConf.to_container(es, resolve=True)
        settings.pop("enabled")
        callbacks.append(build("early_stopping", functools.partial(EarlyStopping, **settings)))
    return callbacks
