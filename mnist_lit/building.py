"""Objects built from the config, with a library's refusal turned into a one-line config error.

torch, Lightning and the package's own classes check their arguments when they are built:
torch's optimizers refuse a negative learning rate, a class refuses an unknown keyword,
Lightning's Trainer refuses a count it cannot use. Every config group is built through
``build`` here, so any value any of them refuses, present or future, reaches the user as
``GROUP.KEY=VALUE is not allowed by TARGET: what the library said``, with no traceback.

The key is found by asking the library again without each configured argument in turn
(building is cheap and has no side effects worth keeping on this path); the one whose removal
makes the error go away is named.
"""

from __future__ import annotations

import functools
import inspect
import logging
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig

from mnist_lit.errors import UserError, one_line

T = TypeVar("T")
# what libraries raise for an argument they refuse (the messages say which and why)
# (torch's own setters raise RuntimeError: ``benchmark=3`` -> "set_benchmark_cudnn expects a bool")
REFUSALS = (
    ValueError,
    TypeError,
    ArithmeticError,
    RuntimeError,
    MisconfigurationException,
    InstantiationException,
)


def factory(group: str, node: DictConfig | Mapping[str, Any]) -> functools.partial:
    """The config group's ``_target_`` with its arguments, not yet called."""
    try:
        made = instantiate(node, _partial_=True)
    except InstantiationException as err:
        target = node.get("_target_") if hasattr(node, "get") else None
        raise UserError(f"{group}._target_={target!r} cannot be used: {reason(err)}") from err
    if not isinstance(made, functools.partial):
        raise UserError(f"{group} has no _target_ to build")
    return made


def build(
    group: str, make: Callable[..., T], *args: Any, then: Callable[[T], Any] | None = None, **kwargs: Any
) -> T:
    """``make(*args, **kwargs)``, where ``make`` is a partial of configured arguments; a refusal of
    one of them becomes a UserError naming ``group.KEY``, its value and the library's reason.

    ``then`` uses the object once (an optimizer's first step): some values are refused only then.
    """
    try:
        made = make(*args, **kwargs)
        if then is not None:
            then(made)
        return made
    except UserError:
        raise
    except REFUSALS as err:
        raise UserError(refusal(group, make, args, kwargs, err, then)) from err


def refusal(
    group: str,
    make: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    err: BaseException,
    then: Callable[[Any], Any] | None = None,
) -> str:
    """The message for ``err``, naming the configured argument behind it when one can be found."""
    func = make.func if isinstance(make, functools.partial) else make
    configured = dict(make.keywords) if isinstance(make, functools.partial) else {}
    target = name_of(func)
    unknown = [k for k in configured if not accepts(func, k)]
    if unknown:
        takes = ", ".join(p for p in parameters(func) if p not in kwargs and p not in ("params", "optimizer"))
        return f"{group}.{unknown[0]} is not an argument of {target}: it takes {takes or 'none'}"
    culprit = blame(make, args, kwargs, then)
    if culprit is not None:
        return f"{group}.{culprit}={configured[culprit]!r} is not allowed by {target}: {reason(err)}"
    shown = ", ".join(f"{k}={v!r}" for k, v in configured.items())
    return f"{group} ({target} with {shown or 'no arguments'}) cannot be built: {reason(err)}"


def blame(
    make: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    then: Callable[[Any], Any] | None = None,
) -> str | None:
    """The configured argument without which ``make`` builds (and ``then`` passes).

    When leaving out any of several would do (SGD without its momentum never uses ``dampening``),
    the one whose value is not of its default's type is named first.
    """
    if not isinstance(make, functools.partial):
        return None
    fixes = []
    for key in make.keywords:
        rest = {k: v for k, v in make.keywords.items() if k != key}
        # fresh lists each time: Lightning's Trainer appends the callbacks it adds to the one it is given
        fresh = {k: list(v) if isinstance(v, list) else v for k, v in kwargs.items()}
        try:
            with quiet():
                made = make.func(*make.args, *args, **rest, **fresh)
                if then is not None:
                    then(made)
        except Exception:
            continue
        fixes.append(key)
    defaults = defaults_of(make.func)
    odd = [k for k in fixes if k in defaults and not same_kind(make.keywords[k], defaults[k])]
    return (odd or fixes or [None])[0]


def same_kind(value: Any, default: Any) -> bool:
    """Whether ``value`` is of the kind of the parameter's default (an int where a float is, too)."""
    if default is None or value is None:
        return True
    number = (int, float)
    if isinstance(default, number) and not isinstance(default, bool):
        return isinstance(value, number) and not isinstance(value, bool)
    return isinstance(value, type(default))


def defaults_of(func: Callable[..., Any]) -> dict[str, Any]:
    return {p.name: p.default for p in signature_of(func) or [] if p.default is not inspect.Parameter.empty}


@contextmanager
def quiet() -> Iterator[None]:
    """No log lines or warnings from the retries: the user sees the one message."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def reason(err: BaseException) -> str:
    """The library's own words: for Hydra's wrapper, those of the error it wraps; one line."""
    while isinstance(err, InstantiationException) and err.__cause__ is not None:
        err = err.__cause__
    return one_line(err, typed=isinstance(err, ArithmeticError))


def signature_of(func: Callable[..., Any]) -> list[inspect.Parameter] | None:
    """The parameters ``func`` takes, or None where Python cannot tell (some builtins)."""
    try:
        return list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return None


def parameters(func: Callable[..., Any]) -> list[str]:
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in signature_of(func) or [] if p.kind in named and p.name != "self"]


def accepts(func: Callable[..., Any], key: str) -> bool:
    params = signature_of(func)
    if params is None:
        return True
    return any(p.kind == p.VAR_KEYWORD for p in params) or key in {p.name for p in params}


def name_of(func: Callable[..., Any]) -> str:
    module = getattr(func, "__module__", "") or ""
    public = module.split(".")
    # torch.optim.adam.Adam -> torch.optim.Adam, as users write it
    for cut in range(1, len(public)):
        try:
            mod = __import__(".".join(public[:cut]), fromlist=["_"])
        except ImportError:
            continue
        if getattr(mod, getattr(func, "__name__", ""), None) is func:
            return f"{'.'.join(public[:cut])}.{func.__name__}"
    return f"{module}.{getattr(func, '__qualname__', func)}"
