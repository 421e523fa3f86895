"""What a multirun needs beyond one run: failed jobs recorded instead of fatal, threads shared, a table.

Only the standard library, Hydra and OmegaConf are imported here: Hydra builds the callback before
any job starts, and a failing job must be recorded even when torch itself failed to load.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from mnist_lit.errors import UserError, one_line, report
from mnist_lit.record import read_metrics, update_metrics, written_here
from mnist_lit.rundir import rank_zero
from mnist_lit.threads import available_cores, parallel_jobs

log = logging.getLogger(__name__)

# a job folder's name must fit the file system's 255-byte limit with room for "NUM_"
DIRNAME_CHARS = 200
_LONG_FLOAT = re.compile(r"(?<![\w.])\d*\.\d{5,}(?:e[-+]?\d+)?(?![\w.])")


def job_dirname(override_dirname: str) -> str:
    """A sweep job's folder name from its overrides: long floats to 4 significant digits, then cut.

    Optuna's draws (``optim.lr=0.07488900510447863``) and many overrides would otherwise give
    names longer than the file system allows; the job number in front keeps names unique.
    """
    name = _LONG_FLOAT.sub(lambda m: f"{float(m.group()):.4g}", override_dirname)
    return name if len(name) <= DIRNAME_CHARS else name[: DIRNAME_CHARS - 3] + "..."


# used by hydra.sweep.subdir in conf/config.yaml; Hydra resolves it in whichever process runs the job
OmegaConf.register_new_resolver("job_dirname", job_dirname, replace=True)


def in_multirun() -> bool:
    """True inside a job of a ``-m`` sweep (any launcher), where one failure must not stop the others."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def check_not_a_sweep() -> None:
    """A sweep preset (it sets ``hydra.sweeper.params``) started without ``-m`` would train one
    default job and say nothing; it is refused with the command that starts the sweep."""
    hydra_cfg = HydraConfig.get()
    params = hydra_cfg.sweeper.get("params") or {}
    if hydra_cfg.mode == RunMode.MULTIRUN or not params:
        return
    choices = hydra_cfg.runtime.choices
    preset = next(
        (f"{g}={choices[g]}" for g in ("experiment", "hparams_search") if choices.get(g)), "this config"
    )
    over = ", ".join(str(k) for k in params)
    raise UserError(
        f"{preset} is a sweep (over {over}): start it with -m, as python -m mnist_lit -m {preset}"
    )


def record_failure(err: BaseException, seconds: float) -> dict[str, Any]:
    """Write the failed job's metrics.json (status and one-line reason) so the sweep's table shows it.

    What the job itself wrote there while stopping (a diverged run's epochs and last checkpoint)
    is kept, its status becoming ``stopped_as``.
    """
    failure: dict[str, Any] = {
        "status": "failed",
        "reason": one_line(err, typed=True),
        "error_type": type(err).__name__,
    }
    if not HydraConfig.initialized() or not rank_zero():
        return {**failure, "wall_seconds": round(seconds, 2)}  # a DDP process of rank > 0 writes nothing
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    status = read_metrics(out_dir).get("status")
    if written_here(out_dir) and status not in (None, "failed"):
        failure["stopped_as"] = status
    return update_metrics(out_dir, failure, seconds)


def quiet_optuna(config: DictConfig) -> None:
    """Before the Optuna sweeper loads: its database layer (alembic) logs a line per plugin it sets
    up, and Optuna logs through its own coloured handler (raw colour codes in a file or a pipe)
    what the sweeper's own lines say again. Warnings still come through."""
    if "optuna" not in str(config.hydra.sweeper.get("_target_", "")).lower():
        return
    logging.getLogger("alembic").setLevel(logging.WARNING)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


class ResultsTable(Callback):
    """At the end of every multirun: write results.md / results.csv and the report pages
    (report.html, report.md) into the sweep dir, and print the table.

    The sweep exits with status 1 when every job failed, so scripts and CI notice a sweep that
    produced nothing; with at least one completed job it exits 0 and the table names the failures.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Before any job: joblib's n_jobs is valid, and a warning when jobs x threads oversubscribe."""
        quiet_optuna(config)
        try:
            parallel = parallel_jobs(config.hydra.launcher)
        except UserError as err:  # Hydra turns a callback's exceptions into warnings: stop here
            report(err)
        threads, cores = config.get("threads"), available_cores()
        if parallel and threads and parallel * threads > cores:
            log.warning(
                "%d parallel jobs x threads=%d = %d torch threads on %d cores: jobs will slow each other "
                "down; leave threads unset (each job then gets cores // n_jobs threads)",
                parallel,
                threads,
                parallel * threads,
                cores,
            )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from mnist_lit.report import build_report

        sweep_dir = Path(config.hydra.sweep.dir)
        table = build_report(sweep_dir)
        if table is None:
            log.warning("no job directories found under %s", sweep_dir)
            return
        table.write(sweep_dir)
        print(table.markdown(), flush=True)
        log.info("results table: %s; report: %s", sweep_dir / "results.md", sweep_dir / "report.html")
        if table.rows and all(r.status != "completed" for r in table.rows):
            report(SweepFailed(f"all {len(table.rows)} jobs of the sweep failed, see {sweep_dir}"))


class SweepFailed(UserError):
    """Every job of a sweep failed: the sweep produced nothing, which scripts and CI must notice."""

    exit_code = 1
