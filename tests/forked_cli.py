"""``python -m MODULE ARGS`` as a child forked from one process that imported torch and Lightning.

Importing torch, torchvision, Lightning and the package's training code costs a command about
ten seconds on a slow 2-core CPU, more than most of the suite's short runs train. This server
pays it once per test process: conftest.run_cli sends it one command line at a time and it forks
a child per command, which then starts as ``python -m`` would (its own process, folder,
environment, argv, standard streams, exit code, atexit handlers) and runs the module as
``__main__``. Modules the tests run with ``-m`` are not imported here, so each child runs its
module's code afresh. MNIST_LIT_TESTS_FRESH=1 makes run_cli start every command as a fresh
interpreter instead.

Protocol, one JSON object a line: the client writes
``{"module", "args", "cwd", "env", "out", "err"}``; the server answers ``{"pid": N}`` as the
child starts and ``{"code": C}`` when it ends (C as subprocess reports it: negative for a signal).
"""

from __future__ import annotations

import json
import os
import runpy
import signal
import sys
import traceback

import lightning  # noqa: F401  (the imports every command would otherwise pay)
import torch  # noqa: F401
import torchvision  # noqa: F401

import mnist_lit.train  # noqa: F401

# the modules commands run as __main__: runpy warns when one was imported before it runs
RUN_AS_MAIN = (
    "mnist_lit.__main__",
    "mnist_lit.evaluate",
    "mnist_lit.predict",
    "mnist_lit.export",
    "mnist_lit.report",
)


def exit_code(stop: SystemExit) -> int:
    """The status a Python process exits with for ``stop``, printing a non-int code as Python does."""
    if stop.code is None:
        return 0
    if isinstance(stop.code, int):
        return stop.code
    print(stop.code, file=sys.stderr)
    return 1


def child(request: dict) -> None:
    """Become ``python -m MODULE ARGS`` started in CWD with ENV, then exit; never returns."""
    code = 1
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for fd, path, flags in (
            (0, os.devnull, os.O_RDONLY),
            (1, request["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
            (2, request["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
        ):
            opened = os.open(path, flags, 0o644)
            os.dup2(opened, fd)
            os.close(opened)
        sys.argv = ["-m", *request["args"]]  # runpy puts the module's path first, as -m does
        sys.path[0] = os.getcwd()  # -m puts the working folder first
        try:
            runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as stop:
            code = exit_code(stop)
        except KeyboardInterrupt:
            traceback.print_exc()
            code = -signal.SIGINT  # Python ends itself with the signal, as the shell expects
        except BaseException:
            traceback.print_exc()
        # what the interpreter does on its way out: join threads, run atexit, flush
        import atexit
        import threading

        threading._shutdown()  # type: ignore[attr-defined]
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        if code < 0:
            signal.signal(-code, signal.SIG_DFL)
            os.kill(os.getpid(), -code)
        os._exit(code)


def answer(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def serve() -> None:
    early = sorted(m for m in RUN_AS_MAIN if m in sys.modules)
    if early:
        raise SystemExit(f"forked_cli: {early} imported before their commands run them")
    answer({"ready": os.getpid()})
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            child(request)
        answer({"pid": pid})
        _, status = os.waitpid(pid, 0)
        answer({"code": os.waitstatus_to_exitcode(status)})


if __name__ == "__main__":
    serve()
