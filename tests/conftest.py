"""Shared fixtures: where the real MNIST is, and how to run the CLI as a user would."""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import mnist_lit
from mnist_lit import integrity

REPO = Path(__file__).resolve().parents[1]
# the configs as the installed package ships them
CONF = Path(mnist_lit.__file__).resolve().parent / "conf"
# CI and `make test` use the copy beside the repository unless MNIST_ROOT says otherwise
DEFAULT_MNIST_ROOT = REPO.parent / "shared" / "mnist"
RAW_FILES = tuple(f.name for f in integrity.RAW_FILES)

# A warning raised from the package's own code fails the suite: in this process through pytest's
# filterwarnings (pyproject.toml), and in every command a test starts through PYTHONWARNINGS,
# which names modules exactly, so each of the package's modules (and __main__, as ``python -m``
# runs them) is listed.
PACKAGE = Path(mnist_lit.__file__).resolve().parent
MODULES = ["__main__"] + sorted(
    ".".join(("mnist_lit", *p.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
    for p in PACKAGE.rglob("*.py")
)
os.environ["PYTHONWARNINGS"] = ",".join(f"error::Warning:{m}" for m in MODULES)
# what Python prints for a warning (and Lightning for its own): "path/to/file.py:LINE: message"
WARNING_LINE = re.compile(r"^\S+\.py:\d+: ", re.MULTILINE)

# tiny but real: a few batches of real MNIST, evaluated on a few batches
TINY = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=20",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.num_sanity_val_steps=0",
]


@pytest.fixture(scope="module")
def hydra_conf() -> Iterator[None]:
    """Hydra initialised on the package's configs, for compose() in a test module."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


class MnistMissing(Exception):
    """No MNIST to test with, and none to be had: the message says how to point the tests at one."""


def has_mnist(root: Path) -> bool:
    return all((root / "MNIST" / "raw" / name).is_file() for name in RAW_FILES)


def find_mnist(env_root: str | None, beside: Path, default: Path, download: Callable[[Path], None]) -> Path:
    """Where the tests read MNIST: ``MNIST_ROOT``; else the copy beside the repository
    (../shared/mnist); else the package's default data root, downloaded there once as
    ``make train`` does. Raises MnistMissing when none of these can be had."""
    if env_root:
        if not has_mnist(Path(env_root)):
            raise MnistMissing(f"MNIST_ROOT={env_root} holds no MNIST/raw/ with the four MNIST files")
        return Path(env_root)
    for root in (beside, default):
        if has_mnist(root):
            return root
    try:
        download(default)
    except Exception as err:  # no network, a refused mirror, a damaged download
        raise MnistMissing(
            f"the tests train on real MNIST, and it could not be downloaded into {default} ({err}). "
            "Point MNIST_ROOT at a folder holding MNIST/raw/ (torchvision's layout), e.g. "
            "MNIST_ROOT=/path/to/mnist make test"
        ) from err
    return default


def download_mnist(root: Path) -> None:
    """As ``make train`` gets MNIST: torchvision's download into the data root, checked."""
    from mnist_lit.data import ensure_mnist

    ensure_mnist(root)


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """Real MNIST (see find_mnist); without it the whole suite stops with one message."""
    try:
        return find_mnist(os.environ.get("MNIST_ROOT"), DEFAULT_MNIST_ROOT, REPO / "data", download_mnist)
    except MnistMissing as err:
        pytest.exit(f"error: {err}", returncode=2)


class ForkServer:
    """One tests/forked_cli.py process: commands as its forked children, one at a time."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("forked_cli.py"))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
        )  # fmt: skip
        self.pending = b""  # what was read past the last answer: its next answers, in part
        ready = self.read(600)
        assert "ready" in ready, f"tests/forked_cli.py did not start: {ready}"

    def read(self, timeout: float) -> dict:
        """The server's next answer; {} when none comes within ``timeout`` seconds."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        # read the pipe itself: a buffered reader could hold the next answer where select can't see it
        while b"\n" not in self.pending:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return {}
            chunk = os.read(fd, 65536)
            if not chunk:
                return {"died": self.proc.wait()}
            self.pending += chunk
        line, _, self.pending = self.pending.partition(b"\n")
        return json.loads(line)

    def run(self, module: str, args: list[str], cwd: Path, env: dict[str, str], timeout: float):
        assert self.proc.stdin is not None
        with tempfile.TemporaryDirectory() as streams:
            out, err = Path(streams, "out"), Path(streams, "err")
            request = {"module": module, "args": args, "cwd": str(cwd), "env": env}
            self.proc.stdin.write(json.dumps({**request, "out": str(out), "err": str(err)}).encode() + b"\n")
            self.proc.stdin.flush()
            pid = self.read(60)["pid"]
            ended = self.read(timeout)
            if not ended:  # as subprocess.run does: kill it, then say so
                with contextlib.suppress(ProcessLookupError):  # it may end meanwhile
                    os.kill(pid, 9)
                self.read(60)
                raise subprocess.TimeoutExpired([module, *args], timeout, out.read_text(), err.read_text())
            assert "code" in ended, f"tests/forked_cli.py stopped: {ended}"
            return subprocess.CompletedProcess(
                [sys.executable, "-m", module, *args], ended["code"], out.read_text(), err.read_text()
            )

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


class ForkServers:
    """Idle servers, started on first use; commands run side by side (threads) each get their own."""

    def __init__(self) -> None:
        self.idle: list[ForkServer] = []
        self.lock = threading.Lock()
        # the environment the servers start in; a command whose interpreter settings (PYTHONPATH,
        # PYTHONWARNINGS, ...) differ from it needs an interpreter of its own
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")

    def serves(self, env: dict[str, str]) -> bool:
        def interpreter(e: dict[str, str]) -> dict[str, str]:
            return {k: v for k, v in e.items() if k.startswith("PYTHON")}

        return interpreter(env) == interpreter(self.env)

    def run(self, module: str, args: list[str], cwd: Path, env: dict[str, str], timeout: float):
        with self.lock:
            server = self.idle.pop() if self.idle else None
        server = server or ForkServer(self.env)
        try:
            result = server.run(module, args, cwd, env, timeout)
        except BaseException:
            server.close()  # mid-command: its answers are no longer this caller's to read
            raise
        with self.lock:
            self.idle.append(server)
        return result


FORK_SERVERS = ForkServers()


def run_cli(
    *args: str,
    cwd: Path,
    mnist_root: Path | None = None,
    module: str = "mnist_lit",
    timeout: float = 600,
    fresh: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m <module> ARGS`` in ``cwd`` the way a user would; capture its output.

    The command runs in a child forked from a process that has imported torch and Lightning
    (tests/forked_cli.py); ``fresh=True``, MNIST_LIT_TESTS_FRESH=1 or other PYTHON* settings in the
    environment start a new interpreter."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    if mnist_root is not None:
        env["MNIST_ROOT"] = str(mnist_root)
    env["PYTHONUNBUFFERED"] = "1"
    if fresh or os.environ.get("MNIST_LIT_TESTS_FRESH") == "1" or not FORK_SERVERS.serves(env):
        result = subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    else:
        result = FORK_SERVERS.run(module, list(args), cwd, env, timeout)
    printed = WARNING_LINE.search(result.stdout + result.stderr)
    if printed:  # a quiet console: no Python (or Lightning) warning in any command a test runs
        line = (result.stdout + result.stderr)[printed.start() :].splitlines()[0]
        pytest.fail(f"python -m {module} {' '.join(args)} printed a warning: {line}")
    return result


def run_dirs(cwd: Path) -> list[Path]:
    """Run directories (those holding a composed .hydra/config.yaml) under cwd/outputs, oldest first."""
    return sorted(p.parent.parent for p in (cwd / "outputs").rglob(".hydra/config.yaml"))


def train_run(cwd: Path, mnist_root: Path, *overrides: str, fresh: bool = False) -> Path:
    """The run folder of one training run ``python -m mnist_lit OVERRIDES`` in ``cwd``, which must succeed."""
    result = run_cli(*overrides, cwd=cwd, mnist_root=mnist_root, fresh=fresh)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = run_dirs(cwd)
    return run_dir


def last_checkpoint(run_dir: Path) -> dict:
    """The whole of a run's checkpoints/last.ckpt (weights, loops, schedules), as the test's own file."""
    import torch

    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="session")
def trained_run(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One short real twoconv run (about 96% test accuracy), shared by the inspection, evaluate,
    predict and export tests; its test step sees the first 500 test images. It starts as a fresh
    interpreter, so the suite trains at least once exactly as a user's shell would."""
    overrides = [o for o in TINY if not o.startswith("trainer.limit_train_batches")]
    return train_run(
        tmp_path_factory.mktemp("trained"),
        mnist_root,
        *overrides,
        "trainer.limit_train_batches=300",
        "trainer.limit_test_batches=1",
        "data.eval_batch_size=500",
        "inspect.max_misclassified=32",
        "threads=1",
        fresh=True,
    )
