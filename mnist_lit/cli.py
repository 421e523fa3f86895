"""What the evaluate, predict and export commands share: config checks, error reporting, devices.

Only Hydra and OmegaConf are imported at module level, so ``--help`` and config errors of
those commands answer before torch loads.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

from omegaconf import DictConfig, OmegaConf

from mnist_lit.config import Rules, group_options, optional_path, optional_positive_int, path_like
from mnist_lit.errors import UserError, report

# --help of the checkpoint commands lists a group's options as ${mnist_lit_options:model}
OmegaConf.register_new_resolver(
    "mnist_lit_options", lambda group: ", ".join(group_options(group)), replace=True
)
DEVICES = ("cpu", "cuda", "auto")


COMMON: Rules = {
    "ckpt": (path_like, "a .ckpt file or a run directory"),
    "threads": (optional_positive_int, "null or an integer >= 1"),
    "device": (lambda x: x in DEVICES, " or ".join(DEVICES)),
    "data.root": (optional_path, "null (the run's own) or a folder path"),
}


PATH_KEYS = ("ckpt", "images", "out", "preview")


def quote_paths(argv: list[str], keys: tuple[str, ...] = PATH_KEYS) -> list[str]:
    """Path arguments as typed, even with ``=`` or ``,`` in them (as sweep job folders have).

    Hydra's override grammar would otherwise split ``ckpt=outputs/sweeps/.../0_optim.lr=0.01``;
    a value already quoted, or a list (``images=[a.png,b.png]``), is left as it is.
    """
    from mnist_lit.rundir import quote

    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in keys and value and value[0] not in "'\"[":
            arg = f"{key}={quote(value)}"
        out.append(arg)
    return out


def run_command(main: Callable[[], None], config_name: str) -> None:
    """A checkpoint command, as ``python -m`` starts it: misspelled keys and options get one line
    with the closest names before Hydra parses the line, path values are quoted (they may hold
    ``=`` or ``,``), and a reader that leaves early (``--help | head``) ends it quietly."""
    from mnist_lit.config import check_overrides

    with user_errors():
        check_overrides(sys.argv[1:], primary=config_name)
    sys.argv[1:] = quote_paths(sys.argv[1:])
    try:
        main()
    except BrokenPipeError:
        reader_left()


@contextmanager
def user_errors() -> Iterator[None]:
    """A UserError becomes ``error: MESSAGE`` on stderr and its exit code, not a traceback.

    A reader that stops early (``| head``) closes the pipe; the rest of the output is dropped
    quietly, as a shell tool does, instead of ending in a BrokenPipeError.
    """
    try:
        yield
    except UserError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        report(err)
    except BrokenPipeError:
        reader_left()


def reader_left() -> NoReturn:
    """The reader of our output stopped early (``| head``): drop the rest quietly, exit 0."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
    sys.exit(0)


def model_override(cfg: DictConfig) -> dict[str, Any] | None:
    """``model=NAME`` composes conf/model/NAME.yaml: the architecture to load the weights into."""
    model = cfg.get("model")
    return OmegaConf.to_container(model, resolve=True) if model is not None else None  # type: ignore[return-value]


def torch_device(name: str, threads: int | None) -> Any:
    """The torch.device the command runs on; ``threads`` caps CPU intra-op threads."""
    import torch

    from mnist_lit.devices import check_gpu

    if threads:
        torch.set_num_threads(threads)
    check_gpu("device", name, loaded=True)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)
