"""``python -m mnist_lit`` for many command lines, each in a child forked from one process.

The parent imports torch, Lightning and the package once; each command line then runs in a fork
of it (its own process: its own folders, exit code and output) without paying those imports
again. Used for the many refusals that only construction can catch (tests/test_bad_input.py).

    python forked_cli.py CASES.json    # [{"args": [...], "cwd": DIR, "log": FILE}, ...]

Prints the exit codes as a JSON list; each case's stdout and stderr go to its log file.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

import lightning  # noqa: F401  (the imports every case would otherwise pay)
import torch  # noqa: F401
import torchvision  # noqa: F401

import mnist_lit.train  # noqa: F401
from mnist_lit.__main__ import main


def run_case(args: list[str], cwd: str, log: str) -> int:
    pid = os.fork()
    if pid == 0:  # the child: one command line, as the shell would start it
        code = 1
        try:
            os.chdir(cwd)
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.argv = ["mnist_lit", *args]
            try:
                main()
                code = 0
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            except BaseException:
                traceback.print_exc()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    cases = json.loads(open(sys.argv[1]).read())
    print(json.dumps([run_case(c["args"], c["cwd"], c["log"]) for c in cases]))
