"""The one exception type for user mistakes, and how any error is told: one line, no traceback."""

from __future__ import annotations

import sys
from typing import NoReturn


class UserError(Exception):
    """Bad input from the user (config, files, environment): report it and exit non-zero."""

    exit_code = 2


def report(err: UserError) -> NoReturn:
    """``error: MESSAGE`` on stderr and the error's exit code: what every command does with one."""
    print(f"error: {err}", file=sys.stderr)
    sys.exit(err.exit_code)


def one_line(err: BaseException, limit: int = 300, typed: bool = False) -> str:
    """An error's own words on one line, at most ``limit`` characters, as ``Type: text`` when
    ``typed`` or when the text alone says little (``KeyError: 'lr'``)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    text = lines[0] if lines else ""
    if typed or len(text) < 12:
        text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
