"""Checks on a composed config, run before torch or Lightning is imported.

Hydra already rejects unknown groups and misspelled keys; these checks cover what a YAML
schema cannot say: types and ranges. Each failure names the key, the value and what is allowed.
"""

from __future__ import annotations

import difflib
import importlib.util
import math
import re
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from mnist_lit.errors import UserError

# Lightning also knows 64-bit precision, but the package feeds float32 images: refused by name
PRECISIONS = ("32", "32-true", "bf16-mixed", "16-mixed", "bf16-true")
ACCELERATORS = ("cpu", "gpu", "cuda", "auto")
_MISSING = object()
SEED_MAX = 2**32 - 1


# a rule set: key -> (predicate, what is allowed); RULES below, and the checkpoint commands' (cli.py,
# evaluate.py, predict.py, export.py), all built of the predicates here
Rules = dict[str, tuple[Callable[[Any], bool], str]]


def number(x: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def integer(x: Any) -> bool:
    """An int (not a bool)."""
    return isinstance(x, int) and not isinstance(x, bool)


def boolean(x: Any) -> bool:
    return isinstance(x, bool)


def positive(x: Any) -> bool:
    return number(x) and x > 0


def non_negative(x: Any) -> bool:
    return number(x) and x >= 0


def positive_int(x: Any) -> bool:
    return integer(x) and x > 0


def optional_positive_int(x: Any) -> bool:
    return x is None or positive_int(x)


def optional_non_negative_int(x: Any) -> bool:
    return x is None or (integer(x) and x >= 0)


def fraction(x: Any) -> bool:
    return number(x) and 0 <= x <= 1


def path_like(x: Any) -> bool:
    """A non-empty string: a file or folder path."""
    return isinstance(x, str) and x != ""


def optional_path(x: Any) -> bool:
    return x is None or path_like(x)


def int_list(lo: int, hi: int) -> Callable[[Any], bool]:
    """A non-empty list of integers in lo..hi."""
    return lambda x: isinstance(x, list) and bool(x) and all(integer(v) and lo <= v <= hi for v in x)


def ordered_pair(lo: float, hi: float) -> Callable[[Any], bool]:
    """[low, high] with lo < low <= high <= hi."""
    return lambda x: (
        isinstance(x, list) and len(x) == 2 and all(number(v) and lo < v <= hi for v in x) and x[0] <= x[1]
    )


def batch_limit(x: Any) -> bool:
    """Lightning's limit_*_batches: a fraction of batches (0..1] or a whole count."""
    return x is None or (integer(x) and x >= 0) or (isinstance(x, float) and 0 < x <= 1)


# key -> (predicate, what is allowed); keys absent from the composed config are skipped
RULES: Rules = {
    "seed": (lambda x: integer(x) and 0 <= x <= SEED_MAX, f"an integer in 0..{SEED_MAX} (numpy's range)"),
    "threads": (optional_positive_int, "null or an integer >= 1"),
    "optim.lr": (positive, "a number > 0"),
    "optim.weight_decay": (non_negative, "a number >= 0"),
    "optim.momentum": (lambda x: number(x) and 0 <= x < 1, "a number in [0, 1)"),
    "optim.nesterov": (boolean, "true or false"),
    "data.batch_size": (positive_int, "an integer >= 1"),
    "data.eval_batch_size": (positive_int, "an integer >= 1"),
    "data.val_size": (lambda x: integer(x) and 1 <= x <= 59_999, "an integer in 1..59999"),
    "data.root": (path_like, "a folder path"),
    "data.augment.enabled": (boolean, "true or false"),
    "data.augment.degrees": (lambda x: number(x) and 0 <= x <= 180, "a number of degrees in 0..180"),
    "data.augment.translate": (lambda x: number(x) and 0 <= x <= 0.5, "a fraction of the side in 0..0.5"),
    "data.augment.clean_last_epochs": (lambda x: integer(x) and x >= 0, "an integer >= 0"),
    "data.augment.elastic_alpha": (lambda x: number(x) and 0 <= x <= 100, "a number of pixels in 0..100"),
    "data.augment.elastic_sigma": (lambda x: number(x) and 0.5 <= x <= 10, "a number of pixels in 0.5..10"),
    "data.augment.elastic_p": (fraction, "a probability in 0..1"),
    "data.augment.erase_p": (fraction, "a probability in 0..1"),
    "data.augment.erase_scale": (ordered_pair(0, 1), "[low, high] of the image, 0 < low <= high <= 1"),
    "data.augment.scale": (ordered_pair(0, math.inf), "[low, high] with 0 < low <= high"),
    "model.activation": (lambda x: x in ("relu", "leakyrelu"), "relu or leakyrelu"),
    "model.dropout": (lambda x: number(x) and 0 <= x < 1, "a number in [0, 1)"),
    "sched.scheduler.step_size": (positive_int, "an integer >= 1"),
    "sched.scheduler.gamma": (positive, "a number > 0"),
    "sched.scheduler.warmup_epochs": (non_negative, "a number >= 0"),
    "sched.scheduler.start_factor": (lambda x: number(x) and 0 < x <= 1, "a number in (0, 1]"),
    "sched.scheduler.floor": (fraction, "a number in [0, 1]"),
    "sched.scheduler.pct_start": (lambda x: number(x) and 0 < x < 1, "a number in (0, 1)"),
    "sched.interval": (lambda x: x in ("step", "epoch"), "step or epoch"),
    "trainer.max_epochs": (positive_int, "an integer >= 1"),
    # counts the package or Lightning divides by
    "trainer.log_every_n_steps": (positive_int, "an integer >= 1"),
    "trainer.accumulate_grad_batches": (positive_int, "an integer >= 1"),
    "trainer.check_val_every_n_epoch": (optional_positive_int, "null or an integer >= 1"),
    "trainer.accelerator": (lambda x: x in ACCELERATORS, " or ".join(ACCELERATORS)),
    "trainer.devices": (lambda x: positive_int(x) or x == "auto", "an integer >= 1 or auto"),
    "trainer.precision": (lambda x: str(x) in PRECISIONS, ", ".join(PRECISIONS)),
    "trainer.limit_train_batches": (batch_limit, "null, a fraction in (0, 1] or a batch count"),
    "trainer.limit_val_batches": (batch_limit, "null, a fraction in (0, 1] or a batch count"),
    "trainer.limit_test_batches": (batch_limit, "null, a fraction in (0, 1] or a batch count"),
    "trainer.gradient_clip_val": (lambda x: x is None or positive(x), "null or a number > 0"),
    "trainer.deterministic": (lambda x: boolean(x) or x == "warn", "true, false or warn"),
    "trainer.fast_dev_run": (
        lambda x: boolean(x) or positive_int(x),
        "true, false or a batch count",
    ),
    "inspect.enabled": (boolean, "true or false"),
    "inspect.every_n_epochs": (positive_int, "an integer >= 1"),
    "inspect.feature_digits": (lambda x: integer(x) and 1 <= x <= 10, "an integer in 1..10"),
    "inspect.max_channels": (positive_int, "an integer >= 1"),
    "inspect.max_misclassified": (lambda x: integer(x) and x >= 0, "an integer >= 0"),
    "inspect.pr_curves": (boolean, "true or false"),
    "early_stopping.enabled": (boolean, "true or false"),
    "early_stopping.patience": (lambda x: integer(x) and x >= 0, "an integer >= 0"),
    "early_stopping.stopping_threshold": (lambda x: x is None or number(x), "null or a number"),
    "progress_every": (positive_int, "an integer >= 1"),
    "compile": (boolean, "true or false"),
    "channels_last": (boolean, "true or false"),
    "steps_per_call": (lambda x: x == "auto" or positive_int(x), "auto or an integer >= 1"),
    "test_checkpoint": (lambda x: x in ("best", "last"), "best or last"),
    "label_smoothing": (lambda x: number(x) and 0 <= x < 1, "a number in [0, 1)"),
    "ema.enabled": (boolean, "true or false"),
    "ema.decay": (lambda x: number(x) and 0 < x < 1, "a number in (0, 1)"),
    "ema.warmup": (boolean, "true or false"),
    "ema.update_every_n_steps": (positive_int, "an integer >= 1"),
    "ema.update_starting_at_step": (optional_non_negative_int, "null or an integer >= 0"),
    "ema.bn_images": (lambda x: integer(x) and x >= 0, "an integer >= 0 (training images; 0: none)"),
}

# what steps_per_call=auto means where nothing rules it out: Lightning's per-call work then costs
# about 2% of a tiny network's step on a CPU instead of 15-20% (8 leaves about 4%)
AUTO_STEPS_PER_CALL = 16
FLOAT32_OR_BF16 = ("32", "32-true", "bf16-mixed", "bf16-true")


# a logger's class -> the package it needs, which the package's extra of that name installs
LOGGER_PACKAGES = {"MLFlowLogger": "mlflow"}


def check_config(cfg: DictConfig) -> None:
    """Raise UserError on the first training value out of its allowed range or of the wrong type."""
    check_rules(cfg, RULES)
    resolve_steps_per_call(cfg)
    check_logger_packages(cfg)


def check_logger_packages(cfg: DictConfig) -> None:
    """A chosen logger whose package is not installed is named with the extra that installs it,
    before torch loads (Lightning would say so only once training starts, in a traceback)."""
    for name, node in (cfg.get("logger") or {}).items():
        target = str(node.get("_target_", "")) if hasattr(node, "get") else ""
        package = LOGGER_PACKAGES.get(target.rsplit(".", 1)[-1])
        if package and importlib.util.find_spec(package) is None:
            raise UserError(
                f"logger {name} needs {package}, an optional extra: pip install 'mnist-lit[{package}]' "
                f"(from a checkout: pip install '.[{package}]'), or choose another logger "
                "(logger=tensorboard, logger=csv or logger=[tensorboard,csv])"
            )


def resolve_steps_per_call(cfg: DictConfig) -> int:
    """The optimizer steps per Lightning training step a run makes, or a UserError naming the clash.

    ``auto`` is AUTO_STEPS_PER_CALL where the settings allow several steps per call, else 1.
    """
    value = cfg.get("steps_per_call", 1)
    if value == 1:
        return 1
    t = cfg.trainer
    clashes = {
        "trainer.accumulate_grad_batches": t.get("accumulate_grad_batches", 1) not in (1, None),
        "trainer.devices": t.get("devices", 1) not in (1, "1"),
        "trainer.num_nodes": t.get("num_nodes", 1) != 1,
        "trainer.strategy": str(t.get("strategy", "auto")) not in ("auto", "single_device"),
        "trainer.precision": str(t.get("precision", "32")) not in FLOAT32_OR_BF16,
        "trainer.max_steps": t.get("max_steps", -1) not in (-1, None),
        "trainer.overfit_batches": t.get("overfit_batches", 0) not in (0, None),
    }
    for key, clash in clashes.items():
        if clash and value == "auto":
            return 1
        if clash:
            raise UserError(
                f"steps_per_call={value} cannot be combined with {key}={t.get(key.split('.')[1])}: "
                "several steps per call need one process on one device, float32 or bf16 precision, "
                "no gradient accumulation, no overfit_batches and an epoch count; use steps_per_call=1 or "
                "auto here"
            )
    return AUTO_STEPS_PER_CALL if value == "auto" else int(value)


def check_rules(cfg: DictConfig, rules: Rules) -> None:
    """Raise UserError on the first missing required value or value out of its allowed range."""
    for key, (allowed, what) in rules.items():
        try:
            value = OmegaConf.select(cfg, key, default=_MISSING, throw_on_missing=True)
        except Exception as err:  # a required value (???) left unset
            raise UserError(f"{key} is required: set it on the command line ({key}=...)") from err
        if value is _MISSING:
            continue
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        if not allowed(value):
            raise UserError(f"{key}={value!r} is not allowed: use {what}")


CONF_DIR = Path(__file__).resolve().parent / "conf"


def check_overrides(argv: list[str], conf_dir: Path = CONF_DIR, primary: str = "config") -> None:
    """Before Hydra composes the command line: an override with no key (``=5``, which Hydra would
    answer with a traceback), a key no config file has (``trainer.max_epoch``) and an unknown option
    of one of our config groups (``model=nope``) each get one line, with the closest valid names.

    Keys added with ``+`` and Hydra's own (``hydra.``, ``hydra/launcher=``) are left to Hydra.
    """
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        if not key.lstrip("+~"):
            raise UserError(f"override {arg!r} has no key: write KEY=VALUE, e.g. optim.lr=0.01")
        if key.startswith("+") or key.lstrip("~").startswith("hydra") or "/" in key:
            continue  # a new key, or Hydra's: Hydra checks those
        key = key.lstrip("~")
        groups = config_groups(conf_dir, primary)
        if key in groups:
            check_options(key, value, group_options(key, conf_dir))
            continue
        keys = config_keys(conf_dir, primary)
        if key not in keys:
            raise UserError(
                f"{key} is not a key of this command's config{did_you_mean(key, keys | set(groups))}; "
                f"to add a new key, write +{key}={value}"
            )


def check_options(group: str, value: str, options: list[str]) -> None:
    """``group=a,b`` and ``group=[a,b]`` name options of the group (a sweep's choice(...),
    range(...) are Hydra's)."""
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]  # several options at once (logger=[tensorboard,csv])
    if any(c in value for c in "()[]{}$*"):
        return  # sweep syntax (choice(...), range(...), glob(...)) or an interpolation
    for choice in value.split(","):
        if choice.strip() == "null":  # Hydra would answer with a traceback
            raise UserError(f"{group}=null chooses nothing in Hydra: write ~{group} to leave the group out")
        if choice.strip() not in (*options, ""):
            hint = did_you_mean(choice.strip(), options)
            raise UserError(
                f"{group}={choice.strip()} is not an option of {group}{hint}: use one of {', '.join(options)}"
            )


def group_options(group: str, conf_dir: Path = CONF_DIR) -> list[str]:
    """The options of a config group: its files' names (``model`` -> ``oneconv``, ``twoconv``, ...)."""
    return sorted(f.stem for f in (conf_dir / group).glob("*.yaml"))


@cache
def config_groups(conf_dir: Path = CONF_DIR, primary: str = "config") -> list[str]:
    """The config groups the primary config's defaults list composes (``model``, ``optim``, ...)."""
    defaults = (yaml.safe_load((conf_dir / f"{primary}.yaml").read_text()) or {}).get("defaults", [])
    names = [next(iter(d)) for d in defaults if isinstance(d, dict)]
    return [n for n in names if not n.startswith("override") and (conf_dir / n).is_dir()]


@cache
def config_keys(conf_dir: Path = CONF_DIR, primary: str = "config") -> frozenset[str]:
    """Every key a command line may set: those of the primary config and of its groups' options.

    Read from the YAML files themselves (a group option's keys sit under its ``# @package``, the
    group's name by default), so a misspelled key is answered before Hydra composes anything.
    """
    keys: set[str] = set()
    files = [(conf_dir / f"{primary}.yaml", "")]
    for group in config_groups(conf_dir, primary):
        files += [(f, group) for f in sorted((conf_dir / group).glob("*.yaml"))]
    for path, group in files:
        text = path.read_text()
        header = re.search(r"^# @package (\S+)", text, re.MULTILINE)
        package = header.group(1) if header else group
        package = "" if package == "_global_" else package
        _collect(yaml.safe_load(text) or {}, package, keys)
    return frozenset(keys)


def _collect(node: Any, prefix: str, keys: set[str]) -> None:
    if prefix:
        keys.add(prefix)
    if isinstance(node, dict):
        for key, value in node.items():
            if key != "defaults" and not (prefix == "" and key == "hydra"):
                _collect(value, f"{prefix}.{key}" if prefix else str(key), keys)


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """' (did you mean X?)' for the closest candidates, or ''."""
    close = difflib.get_close_matches(word, sorted(candidates), n=2, cutoff=0.8)
    return f" (did you mean {' or '.join(close)}?)" if close else ""
