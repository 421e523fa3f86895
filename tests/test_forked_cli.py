"""The suite's way of running commands (tests/forked_cli.py): a forked child behaves as a fresh one."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

from conftest import TINY, ForkServer, read_metrics, run_cli, run_dirs


def test_answers_that_arrive_together_are_each_read() -> None:
    read_end, write_end = os.pipe()
    os.write(write_end, b'{"pid": 7}\n{"code": 0}\n')
    server = ForkServer.__new__(ForkServer)  # its reading only, on a pipe of this test's
    server.proc = SimpleNamespace(stdout=os.fdopen(read_end, "rb"), wait=lambda: 0)
    server.pending = b""
    assert server.read(5) == {"pid": 7}
    assert server.read(5) == {"code": 0}
    assert server.read(0.1) == {}
    os.close(write_end)
    assert server.read(5) == {"died": 0}


def test_a_forked_command_trains_and_answers_as_a_fresh_interpreter(mnist_root: Path, tmp_path: Path) -> None:
    results = {}
    for how in ("forked", "fresh"):
        (tmp_path / how).mkdir()
        proc = run_cli(*TINY, "threads=1", cwd=tmp_path / how, mnist_root=mnist_root, fresh=how == "fresh")
        assert proc.returncode == 0, proc.stderr[-2000:]
        (run,) = run_dirs(tmp_path / how)
        results[how] = (proc, read_metrics(run))
    (forked, forked_metrics), (fresh, fresh_metrics) = results["forked"], results["fresh"]
    assert forked_metrics["test/acc"] == fresh_metrics["test/acc"]
    assert forked_metrics["global_steps"] == fresh_metrics["global_steps"]
    # the same console, up to the run's folder and time
    assert forked.stdout.count("\n") == fresh.stdout.count("\n")
    refused = {how: run_cli("data.batch_size=0", cwd=tmp_path, fresh=how == "fresh") for how in results}
    assert refused["forked"].returncode == refused["fresh"].returncode == 2
    assert refused["forked"].stderr == refused["fresh"].stderr
