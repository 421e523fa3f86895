"""A catalogue of bad command lines: each gets a short message, exit code 2, no traceback, no folder.

Every case runs ``python -m mnist_lit`` as a user would, in an empty folder. The first catalogue
runs with a stand-in ``torch`` package on the path that fails when imported: what the package
checks itself (types and ranges of the values it computes with, Hydra's own errors) must be
answered before torch loads (and, with it, seconds of startup). The second catalogue holds values
only the libraries know to refuse (torch's optimizers and schedules, the model classes, Lightning's
Trainer and callbacks): they are refused where those are built, before any training.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli

# (command line, text the message must contain)
CASES: list[tuple[list[str], list[str]]] = [
    # unknown options and names
    (["--foo"], ["unrecognized arguments: --foo"]),
    (["model=nope"], ["model=nope is not an option of model: use one of", "oneconv"]),
    (["optim=lbfgs"], ["optim=lbfgs is not an option of optim", "adadelta, adam, adamw, nadam, sgd"]),
    (["-m", "model=twoconv,nope"], ["model=nope is not an option of model"]),
    (["experiment=report000"], ["experiment=report000 is not an option of experiment", "report000_lr_wd"]),
    (["hydra/launcher=nope"], ["Could not find 'hydra/launcher/nope'", "joblib"]),
    # misspelled keys and options: one line with the closest valid names
    (["optim.lrr=0.1"], ["optim.lrr is not a key", "(did you mean optim.lr?)", "+optim.lrr=0.1"]),
    (["trainer.max_epoch=3"], ["trainer.max_epoch is not a key", "did you mean trainer.max_epochs"]),
    (["mdel=twoconv"], ["mdel is not a key", "(did you mean model?)"]),
    (["model=twoconvv"], ["model=twoconvv is not an option of model (did you mean twoconv?)"]),
    (["logger=tensorbord"], ["logger=tensorbord is not an option of logger (did you mean tensorboard?)"]),
    (
        ["logger=[csv,tensorbord]"],
        ["logger=tensorbord is not an option of logger (did you mean tensorboard?)"],
    ),
    (["debug=fdrr"], ["debug=fdrr is not an option of debug (did you mean fdr?)", "limit, overfit"]),
    (["logger=null"], ["logger=null chooses nothing in Hydra: write ~logger"]),
    (["-m", "optim.lr=0.1,0.2", "optim.weight_decy=0,1"], ["did you mean optim.weight_decay?"]),
    # a sweep preset needs -m
    (["experiment=report000_lr_wd"], ["is a sweep", "python -m mnist_lit -m experiment=report000_lr_wd"]),
    (["hparams_search=optuna"], ["hparams_search=optuna is a sweep", "-m hparams_search=optuna"]),
    # wrong types
    (["optim.lr=abc"], ["optim.lr='abc' is not allowed", "a number > 0"]),
    (["data.batch_size=2.5"], ["data.batch_size=2.5 is not allowed", "an integer >= 1"]),
    (["data.batch_size=[1,2]"], ["data.batch_size=[1, 2] is not allowed"]),
    (["seed=1.5"], ["seed=1.5 is not allowed", "an integer"]),
    (["seed=4294967296"], ["seed=4294967296 is not allowed", "0..4294967295"]),
    (["seed=-1"], ["seed=-1 is not allowed", "numpy's range"]),
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
    (["model=tutorialnet", "model.dropout=2"], ["model.dropout=2 is not allowed", "[0, 1)"]),
    (["trainer.precision=8"], ["trainer.precision=8 is not allowed", "16-mixed"]),
    (["trainer.precision=64"], ["trainer.precision=64 is not allowed", "bf16-mixed"]),
    (["trainer.log_every_n_steps=0"], ["trainer.log_every_n_steps=0 is not allowed", "an integer >= 1"]),
    (["trainer.check_val_every_n_epoch=0"], ["trainer.check_val_every_n_epoch=0 is not allowed"]),
    (["trainer.accumulate_grad_batches=0"], ["trainer.accumulate_grad_batches=0 is not allowed"]),
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
    check_refused(proc, expected, tmp_path)


def check_refused(proc: subprocess.CompletedProcess[str], expected: list[str], cwd: Path) -> None:
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert "Traceback" not in output, output
    for text in expected:
        assert text in output, f"{text!r} not in:\n{output}"
    # short: the message, not a page (Hydra lists a group's options, one per line)
    assert len(output.splitlines()) <= 25, output
    assert not (cwd / "outputs").exists(), "a refused command left a run folder behind"


FEW_BATCHES = ["trainer.limit_train_batches=3", "trainer.enable_progress_bar=false", "inspect.enabled=false"]
# (command line, text the message must contain): values torch, Lightning or a model class refuses
LIBRARY_CASES: list[tuple[list[str], list[str]]] = [
    (["+optim.foo=1"], ["optim.foo is not an argument of torch.optim.Adam", "weight_decay"]),
    (["optim.betas=[2,0.9]"], ["optim.betas=[2, 0.9] is not allowed by torch.optim.Adam", "Invalid beta"]),
    (["+optim.eps=-1"], ["optim.eps=-1 is not allowed by torch.optim.Adam", "Invalid epsilon"]),
    (["optim=adadelta", "optim.rho=2"], ["optim.rho=2 is not allowed by torch.optim.Adadelta"]),
    (
        ["optim=sgd", "optim.momentum=0", "optim.nesterov=true"],
        ["optim.nesterov=True is not allowed by torch.optim.SGD", "Nesterov momentum requires"],
    ),
    (
        ["optim=nadam", "+optim.momentum_decay=-1"],
        ["optim.momentum_decay=-1 is not allowed by torch.optim.NAdam"],
    ),
    # torch checks this one only when the optimizer steps
    (["optim=sgd", "+optim.dampening=abc"], ["optim.dampening='abc' is not allowed by torch.optim.SGD"]),
    (["sched=steplr", "+sched.scheduler.foo=1"], ["sched.scheduler.foo is not an argument of", "StepLR"]),
    (["sched.scheduler.div_factor=0"], ["sched.scheduler.div_factor=0 is not allowed", "ZeroDivisionError"]),
    (
        ["+sched.scheduler.anneal_strategy=zigzag"],
        ["sched.scheduler.anneal_strategy='zigzag' is not allowed", "'cos' or 'linear'"],
    ),
    (["sched=warmup", "+sched.scheduler.foo=1"], ["sched.scheduler.foo is not an argument of"]),
    (["+model.width=3"], ["model.width is not an argument of mnist_lit.models.TwoConv", "activation"]),
    (["model=resnet", "+model.foo=1"], ["model.foo is not an argument of mnist_lit.models.ResNet8"]),
    (["+data.foo=1"], ["data.foo is not an argument of mnist_lit.data.MNISTDataModule", "batch_size"]),
    (["+trainer.foo=1"], ["trainer.foo is not an argument of lightning.Trainer", "max_epochs"]),
    (["trainer.gradient_clip_algorithm=foo"], ["trainer.gradient_clip_algorithm='foo' is not allowed"]),
    (["trainer.benchmark=3"], ["trainer.benchmark=3 is not allowed by lightning.Trainer", "bool"]),
    (["+trainer.profiler=nope"], ["trainer.profiler='nope' is not allowed", "simple"]),
    (["+trainer.max_time=abc"], ["trainer.max_time='abc' is not allowed", "DD:HH:MM:SS"]),
    (["+trainer.max_steps=-5"], ["trainer.max_steps=-5 is not allowed", "non-negative"]),
    (["+trainer.overfit_batches=-1"], ["trainer.overfit_batches=-1 is not allowed"]),
    (["+trainer.val_check_interval=-1"], ["trainer.val_check_interval=-1 is not allowed"]),
    (["+trainer.strategy=nope"], ["trainer.strategy='nope' is not allowed"]),
    (
        ["early_stopping.enabled=true", "early_stopping.mode=up"],
        ["early_stopping.mode='up' is not allowed by", "EarlyStopping", "min, max"],
    ),
    # found only when fit starts, once the training data is known
    (
        ["steps_per_call=1", "trainer.limit_train_batches=0.0001"],
        ["trainer: You requested to check 0.0001 of the `train_dataloader`"],
    ),
]


LIBRARY_IDS = [" ".join(a) for a, _ in LIBRARY_CASES]


@pytest.mark.parametrize(("args", "expected"), LIBRARY_CASES, ids=LIBRARY_IDS)
def test_library_refusal(args: list[str], expected: list[str], mnist_root: Path, tmp_path: Path) -> None:
    check_refused(run_cli(*FEW_BATCHES, *args, cwd=tmp_path, mnist_root=mnist_root), expected, tmp_path)
