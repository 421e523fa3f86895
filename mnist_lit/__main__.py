"""``python -m mnist_lit`` / ``mnist-lit``: one training run (or a sweep with ``-m``).

Only Hydra and OmegaConf are imported here, so ``--help``, ``--cfg job`` and config errors
answer at once; torch and Lightning load when training starts.
"""

from __future__ import annotations

import logging
import os
import sys

import hydra
from omegaconf import DictConfig

from mnist_lit.config import check_config
from mnist_lit.errors import UserError

log = logging.getLogger("mnist_lit")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Check the composed config, train, and hand val/acc_best back to Hydra's sweepers."""
    try:
        check_config(cfg)
        from mnist_lit.train import train

        metrics = train(cfg)
    except UserError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        log.error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    return metrics.get("val/acc_best")


if __name__ == "__main__":
    main()
