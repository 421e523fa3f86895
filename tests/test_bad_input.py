"""A catalogue of bad command lines: each gets a short message, exit code 2 and no traceback.

Every case runs ``python -m mnist_lit`` as a user would, in an empty folder, with a stand-in
``torch`` package on the path that fails when imported: bad input must be answered before torch
loads (and, with it, seconds of startup).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# (command line, text the message must contain)
CASES: list[tuple[list[str], list[str]]] = [
    # unknown options and names
    (["--foo"], ["unrecognized arguments: --foo"]),
    (["model=nope"], ["model=nope is not an option of model: use one of", "oneconv"]),
    (["optim=lbfgs"], ["optim=lbfgs is not an option of optim", "adadelta, adam, adamw, nadam, sgd"]),
    (["-m", "model=twoconv,nope"], ["model=nope is not an option of model"]),
    (["experiment=report000"], ["experiment=report000 is not an option of experiment", "report000_lr_wd"]),
    (["hydra/launcher=nope"], ["Could not find 'hydra/launcher/nope'", "joblib"]),
    (["optim.lrr=0.1"], ["Key 'lrr' is not in struct", "optim.lrr"]),
    (["trainer.max_epoch=3"], ["Key 'max_epoch' is not in struct", "trainer.max_epoch"]),
    # wrong types
    (["optim.lr=abc"], ["optim.lr='abc' is not allowed", "a number > 0"]),
    (["data.batch_size=2.5"], ["data.batch_size=2.5 is not allowed", "an integer >= 1"]),
    (["data.batch_size=[1,2]"], ["data.batch_size=[1, 2] is not allowed"]),
    (["seed=1.5"], ["seed=1.5 is not allowed", "an integer"]),
    (["trainer.max_epochs=two"], ["trainer.max_epochs='two' is not allowed", "an integer >= 1"]),
    (
        ["trainer.deterministic=maybe"],
        ["trainer.deterministic='maybe' is not allowed", "true, false or warn"],
    ),
    # out-of-range values
    (["optim.lr=0"], ["optim.lr=0 is not allowed", "a number > 0"]),
    (["optim.lr=-0.1"], ["optim.lr=-0.1 is not allowed"]),
    (["optim.lr=nan"], ["optim.lr=nan is not allowed"]),
    (["data.batch_size=0"], ["data.batch_size=0 is not allowed", "an integer >= 1"]),
    (["data.val_size=0"], ["data.val_size=0 is not allowed", "1..59999"]),
    (["data.val_size=60000"], ["data.val_size=60000 is not allowed", "1..59999"]),
    (["trainer.max_epochs=0"], ["trainer.max_epochs=0 is not allowed", "an integer >= 1"]),
    (["optim=sgd", "optim.momentum=1.5"], ["optim.momentum=1.5 is not allowed", "[0, 1)"]),
    (["trainer.precision=8"], ["trainer.precision=8 is not allowed", "16-mixed"]),
    (["threads=0"], ["threads=0 is not allowed", "null or an integer >= 1"]),
    (["steps_per_call=0"], ["steps_per_call=0 is not allowed", "auto or an integer >= 1"]),
    (["steps_per_call=many"], ["steps_per_call='many' is not allowed", "auto or an integer >= 1"]),
    (
        ["steps_per_call=4", "trainer.accumulate_grad_batches=2"],
        ["steps_per_call=4 cannot be combined with trainer.accumulate_grad_batches=2", "steps_per_call=1"],
    ),
    (
        ["steps_per_call=4", "trainer.precision=16-mixed"],
        ["steps_per_call=4 cannot be combined with trainer.precision=16-mixed", "float32 or bf16"],
    ),
    (["trainer.limit_train_batches=1.5"], ["trainer.limit_train_batches=1.5 is not allowed"]),
    (["accelerator=gpu"], ["trainer.accelerator=gpu", "no NVIDIA GPU", "accelerator=cpu"]),
    # malformed override syntax
    (["trainer.max_epochs=[1"], ["no viable alternative at input '[1'", "override_grammar"]),
    (["optim.lr=0.1=2"], ["mismatched input '='"]),
    (["=5"], ["override '=5' has no key", "KEY=VALUE"]),
    (["model=oneconv,twoconv"], ["Ambiguous value for argument 'model=oneconv,twoconv'", "--multirun"]),
    (["+seed=3"], ["An item is already at 'seed'", "'seed=3'"]),
    # missing values
    (["optim.lr"], ["Error parsing override 'optim.lr'", "missing EQUAL"]),
    (["optim.lr="], ["optim.lr='' is not allowed", "a number > 0"]),
    (["optim.lr=null"], ["optim.lr=None is not allowed", "a number > 0"]),
    (["model="], ["Could not find 'model/'", "Available options in 'model'"]),
    (["data.root="], ["data.root='' is not allowed", "a folder path"]),
    (["ckpt_path=last"], ["ckpt_path=last: no interrupted.ckpt or last.ckpt under", "ckpt_path=PATH"]),
    (["ckpt_path=missing.ckpt"], ["ckpt_path='missing.ckpt': no such file or run directory"]),
]


@pytest.fixture(scope="module")
def no_torch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder whose ``torch`` package fails on import, to put first on PYTHONPATH."""
    folder = tmp_path_factory.mktemp("no_torch")
    (folder / "torch").mkdir()
    (folder / "torch" / "__init__.py").write_text(
        'raise ImportError("torch was imported while answering a bad command line")\n'
    )
    return folder


@pytest.mark.parametrize(("args", "expected"), CASES, ids=[" ".join(a) or "empty" for a, _ in CASES])
def test_bad_command_line(args: list[str], expected: list[str], no_torch: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["PYTHONPATH"] = os.pathsep.join([str(no_torch), env.get("PYTHONPATH", "")])
    env["CUDA_VISIBLE_DEVICES"] = ""  # no GPU, on any machine
    env["MNIST_ROOT"] = str(tmp_path / "no_data")
    proc = subprocess.run(
        [sys.executable, "-m", "mnist_lit", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert "Traceback" not in output, output
    for text in expected:
        assert text in output, f"{text!r} not in:\n{output}"
    # short: the message, not a page (Hydra lists a group's options, one per line)
    assert len(output.splitlines()) <= 25, output
