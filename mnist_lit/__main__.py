"""``python -m mnist_lit`` / ``mnist-lit``: one training run (or a sweep with ``-m``).

Only Hydra and OmegaConf are imported here, so ``--help``, ``--cfg job`` and config errors
answer at once; torch and Lightning load when training starts.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time

import hydra
from omegaconf import DictConfig, OmegaConf

from mnist_lit.cli import quote_paths, reader_left
from mnist_lit.config import check_config, check_overrides
from mnist_lit.devices import check_gpu
from mnist_lit.errors import UserError, one_line, report
from mnist_lit.rundir import check_not_complete, rank_zero, resume_argv, started, to_run_log, undo
from mnist_lit.sweep import check_not_a_sweep, in_multirun, record_failure

log = logging.getLogger("mnist_lit")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def run(cfg: DictConfig) -> float | None:
    """Check the composed config, train, and hand val/acc_best back to Hydra's sweepers.

    Inside a sweep (``-m``) a job that fails, for any reason, records ``status: failed`` and a
    one-line reason in its metrics.json and returns None, so the other jobs still run.
    """
    start = time.perf_counter()
    try:
        check_not_a_sweep()
        check_config(cfg)
        check_gpu("trainer.accelerator", OmegaConf.select(cfg, "trainer.accelerator"))
        check_not_complete(cfg)
        from mnist_lit.train import train

        metrics = train(cfg)
    except UserError as err:
        if in_multirun():
            log.error("job failed: %s", err)
            record_failure(err, time.perf_counter() - start)
            return None
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if not rank_zero():  # the first DDP process reports it
            sys.exit(err.exit_code)
        # refused before training: the run folder goes back to what it was; later, its log keeps why
        if not undo():
            to_run_log(logging.ERROR, "%s", err)
        report(err)
    except Exception as err:
        if in_multirun():
            record_failure(err, time.perf_counter() - start)
            log.exception("job failed: %s", one_line(err, typed=True))
            return None
        if not undo() and rank_zero():
            record_failure(err, time.perf_counter() - start)
        raise
    return metrics.get("val/acc_best")


def main() -> None:
    """Entry point; a resume (``ckpt_path=...``) first gets the stopped run's overrides and folder.

    Hydra reports a command line it cannot parse or compose (unknown group option or key,
    malformed override) and exits with 1; as that happens before any job starts, it is bad input
    like any other and exits with UserError's code.
    """
    try:
        check_overrides(sys.argv[1:])
        sys.argv[1:] = resume_argv(quote_paths(sys.argv[1:], keys=("ckpt_path",)))
    except UserError as err:
        report(err)
    try:
        run()
    except SystemExit as stop:
        if stop.code == 1 and not started():
            sys.exit(UserError.exit_code)
        raise
    except BrokenPipeError:  # python -m mnist_lit --help | head
        reader_left()
    except KeyboardInterrupt:  # Ctrl-C while starting up, before training handles it
        undo()
        print("stopped by Ctrl-C before training started: nothing to save", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)


if __name__ == "__main__":
    main()
