"""Every option of every config group composes, passes the checks and instantiates."""

from __future__ import annotations

import io

import pytest
import torch
from conftest import CONF
from hydra import compose
from hydra.utils import instantiate
from omegaconf import DictConfig

from mnist_lit.config import check_config
from mnist_lit.errors import UserError

GROUPS = ("model", "optim", "sched", "accelerator", "data")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def make(overrides: list[str]) -> DictConfig:
    return compose(config_name="config", overrides=overrides)


def assert_loads_as_weights_only(state: dict) -> None:
    """What goes into every checkpoint must load back with torch.load(weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    torch.load(buffer, weights_only=True)


def test_groups_offer_the_documented_options() -> None:
    assert options("model") == sorted(
        [
            "oneconv",
            "twoconv",
            "resnet",
            "tutorialnet",
            "convnet",
            "sepconv",
            "bnconvnet",
            "examplesnet",
            "vggnet",
            "simplecnn",
        ]
    )
    assert options("optim") == sorted(["sgd", "adam", "adamw", "nadam", "adadelta"])
    assert set(options("sched")) >= {"constant", "steplr", "warmup", "onecycle"}
    assert set(options("accelerator")) >= {"cpu", "gpu", "auto"}


@pytest.mark.parametrize("group, option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_passes_checks(hydra_conf: None, group: str, option: str) -> None:
    cfg = make([f"{group}={option}"])
    check_config(cfg)
    if group == "model":
        net = instantiate(cfg.model)
        assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    if group == "optim":
        assert {"lr", "weight_decay"} <= set(cfg.optim)
        opt = instantiate(cfg.optim)([torch.nn.Parameter(torch.zeros(3))])
        assert opt.param_groups[0]["lr"] == cfg.optim.lr
        assert_loads_as_weights_only(opt.state_dict())
    if group == "sched":
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=0.1)
        kwargs = {"total_steps": 20, "steps_per_epoch": 10} if cfg.sched.interval == "step" else {}
        sched = instantiate(cfg.sched.scheduler)(opt, **kwargs)
        assert isinstance(sched, torch.optim.lr_scheduler.LRScheduler)
        assert_loads_as_weights_only({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()})
    if group == "accelerator":
        assert {"accelerator", "devices", "precision"} <= set(cfg.trainer)


@pytest.mark.parametrize(
    ("precision", "allowed"),
    [("32", True), ("bf16-mixed", True), ("16-mixed", True), ("64", False), ("64-true", False)],
)
def test_precisions_the_package_trains_with(hydra_conf: None, precision: str, allowed: bool) -> None:
    """Lightning knows 64-bit precision too, but the package feeds float32 images: refused by name."""
    cfg = make(["accelerator=gpu", f"trainer.precision={precision}"])
    if allowed:
        check_config(cfg)
    else:
        with pytest.raises(UserError, match=rf"trainer.precision='?{precision}'? is not allowed: use 32"):
            check_config(cfg)


def test_sgd_carries_momentum_nesterov_weight_decay(hydra_conf: None) -> None:
    cfg = make(["optim=sgd", "optim.momentum=0.5", "optim.nesterov=true", "optim.weight_decay=1e-4"])
    opt = instantiate(cfg.optim)([torch.nn.Parameter(torch.zeros(3))])
    group = opt.param_groups[0]
    assert (group["momentum"], group["nesterov"], group["weight_decay"]) == (0.5, True, 1e-4)


def test_data_root_follows_the_environment(hydra_conf: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The data module the run builds reads MNIST from MNIST_ROOT, unless data.root names a folder."""
    monkeypatch.delenv("MNIST_ROOT", raising=False)
    assert instantiate(make([]).data).root == "data"
    monkeypatch.setenv("MNIST_ROOT", "/somewhere/mnist")
    assert instantiate(make([]).data).root == "/somewhere/mnist"
    assert instantiate(make(["data.root=/elsewhere"]).data).root == "/elsewhere"


def test_split_seed_follows_seed(hydra_conf: None) -> None:
    assert make(["seed=7"]).data.split_seed == 7
