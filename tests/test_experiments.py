"""Experiment presets: each seed recipe composes to what SEEDS.md says; sweep presets expand as documented."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import CONF
from hydra import compose
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mnist_lit.config import check_config
from mnist_lit.report import SEED_REPORTED, seed_table
from mnist_lit.report import main as report_main

# preset -> (model parameters per SEEDS.md, optimizer class, lr, batch size, epochs, schedule class)
RECIPES = {
    "oneconv": (3_870, "SGD", 0.01, 32, 30, "ConstantLR"),
    "twoconv_relu": (50_826, "SGD", 0.01, 32, 30, "ConstantLR"),
    "twoconv_leakyrelu": (50_826, "SGD", 0.01, 32, 30, "ConstantLR"),
    "resnet": (98_346, "SGD", 0.01, 32, 10, "ConstantLR"),
    "tutorialnet": (21_840, "SGD", 0.01, 64, 3, "ConstantLR"),
    "convnet": (207_258, "SGD", 0.001, 64, 20, "ConstantLR"),
    "sepconv": (30_306, "SGD", 0.05, 64, 3, "ConstantLR"),
    "bnconvnet": (5_070_832, "Adam", 3e-4, 16, 64, "StepLR"),
    "examplesnet": (1_199_882, "Adadelta", 1.0, 64, 14, "StepLR"),
}
# sweep preset -> (jobs, the keys it sweeps)
SWEEPS = {
    "report000_lr_wd": (9, {"optim.lr", "optim.weight_decay"}),
    "report004_optim_sched": (9, {"optim", "sched"}),
    "best_ensemble": (6, {"seed", "data.augment.elastic_alpha"}),
}


def presets() -> list[str]:
    return sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def make(overrides: list[str]) -> DictConfig:
    return compose(config_name="config", overrides=overrides, return_hydra_config=True)


def test_every_seed_recipe_and_sweep_has_a_preset() -> None:
    assert set(presets()) >= set(RECIPES) | set(SWEEPS)
    assert set(SEED_REPORTED) == set(RECIPES)


@pytest.mark.parametrize("preset", sorted(RECIPES))
def test_seed_preset_composes_to_the_recipe(hydra_conf: None, preset: str) -> None:
    params, optim, lr, batch, epochs, sched = RECIPES[preset]
    cfg = make([f"experiment={preset}"])
    check_config(cfg)
    net = instantiate(cfg.model)
    assert sum(p.numel() for p in net.parameters()) == params
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    opt = instantiate(cfg.optim)(net.parameters())
    assert type(opt).__name__ == optim
    assert math.isclose(opt.param_groups[0]["lr"], lr)
    assert cfg.data.batch_size == batch
    assert cfg.trainer.max_epochs == epochs
    scheduler = instantiate(cfg.sched.scheduler)(opt)
    assert type(scheduler).__name__ == sched
    assert not cfg.hydra.sweeper.params, "a seed recipe is one run, not a sweep"


def test_simplecnn_preset_is_an_et_al_recipe(hydra_conf: None) -> None:
    cfg = make(["experiment=simplecnn"])
    check_config(cfg)
    net = instantiate(cfg.model)
    assert sum(p.numel() for p in net.parameters()) == 1_128_180  # M5
    opt = instantiate(cfg.optim)(net.parameters())
    assert type(opt).__name__ == "Adam" and opt.param_groups[0]["lr"] == 0.001
    scheduler = instantiate(cfg.sched.scheduler)(opt)
    assert type(scheduler).__name__ == "ExponentialLR" and scheduler.gamma == 0.98
    assert cfg.sched.interval == "epoch"
    assert (cfg.data.batch_size, cfg.trainer.max_epochs) == (120, 150)
    augment = cfg.data.augment
    assert augment.enabled and (augment.degrees, augment.translate, list(augment.scale)) == (20, 0.2, [1, 1])
    assert cfg.ema.enabled and cfg.ema.decay == 0.999 and cfg.label_smoothing == 0
    m3 = instantiate(make(["experiment=simplecnn", "model.kernel=3"]).model)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in m3.modules()) == 10


def test_bnconvnet_preset_keeps_report_004_training_details(hydra_conf: None) -> None:
    cfg = make(["experiment=bnconvnet"])
    assert cfg.data.val_size == 10_020  # 16.7% of 60,000 held out
    assert cfg.trainer.gradient_clip_val == 10.0 and cfg.trainer.gradient_clip_algorithm == "norm"
    assert cfg.early_stopping.enabled and cfg.early_stopping.patience == 48
    assert (cfg.sched.scheduler.step_size, cfg.sched.scheduler.gamma) == (2, 0.9)


def expand(cfg: DictConfig, extra: list[str] = ()) -> list[list[str]]:
    """The job override lists Hydra's basic sweeper launches for this config's sweeper.params."""
    params = OmegaConf.to_container(cfg.hydra.sweeper.params) or {}
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()] + list(extra))
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


@pytest.mark.parametrize("preset", sorted(SWEEPS))
def test_sweep_preset_expands_to_its_jobs(hydra_conf: None, preset: str) -> None:
    n_jobs, keys = SWEEPS[preset]
    cfg = make([f"experiment={preset}"])
    jobs = expand(cfg)
    assert len(jobs) == n_jobs
    assert {o.split("=")[0] for job in jobs for o in job} == keys
    assert len({tuple(job) for job in jobs}) == n_jobs
    for job in jobs:  # every job of the sweep composes and passes the checks
        check_config(make([f"experiment={preset}", *job]))
    more = "trainer.max_epochs=10,20" if "seed" in keys else "seed=1,2"
    assert len(expand(cfg, [more])) == 2 * n_jobs


def test_the_best_ensemble_is_experiment_best_over_seeds_with_and_without_elastic(hydra_conf: None) -> None:
    best = OmegaConf.to_container(make(["experiment=best"]), resolve=False)
    recipe = ("model", "optim", "sched", "data", "trainer", "ema", "label_smoothing", "test_checkpoint")
    grid = set()
    for job in expand(make(["experiment=best_ensemble"])):
        cfg = make(["experiment=best_ensemble", *job])
        grid.add((cfg.seed, cfg.data.augment.elastic_alpha))
        # as measured in the README: experiment=best without its BatchNorm measurement
        assert cfg.ema.bn_images == 0
        like_best = OmegaConf.to_container(make(["experiment=best", *job, "ema.bn_images=0"]), resolve=False)
        for key in recipe:
            assert OmegaConf.to_container(cfg, resolve=False)[key] == like_best[key], key
    assert grid == {(s, a) for s in (1, 2, 3) for a in (0, 34)}
    # a list on the command line replaces the preset's
    assert len(expand(make(["experiment=best_ensemble"]), ["seed=4,5,6,7"])) == 8
    assert best["data"]["augment"]["elastic_alpha"] == 0  # experiment=best itself stays without it
    assert best["ema"]["bn_images"] == 10000


def write_job(sweep: Path, num: int, overrides: list[str], metrics: dict) -> None:
    job = sweep / f"{num}_job"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(overrides))
    (job / "metrics.json").write_text(json.dumps(metrics))


def test_seed_table_averages_seeds_per_preset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    done = {"status": "completed", "epochs": 15}
    for seed, acc in ((1, 0.9833), (2, 0.9843)):
        write_job(
            tmp_path / "oneconv",
            seed - 1,
            ["experiment=oneconv", f"seed={seed}", "threads=1"],
            done | {"test/acc": acc},
        )
    write_job(tmp_path / "sepconv", 0, ["experiment=sepconv", "seed=1"], {"status": "failed", "reason": "x"})
    table = seed_table(tmp_path)
    rows = [line for line in table.splitlines() if line.startswith("| oneconv")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].split("|")]
    assert cells[2].startswith("98.45") and cells[3] == "30"  # what report 000 quotes
    assert cells[4] == "98.38 ± 0.07" and cells[5] == "2" and cells[6] == "15"
    assert "threads" not in cells[7] and "seed=1,2" in cells[7]
    assert "sepconv" not in table  # no completed job
    # a later sweep adding a seed joins the same row
    write_job(tmp_path / "oneconv_seed3", 0, ["seed=3", "experiment=oneconv"], done | {"test/acc": 0.9838})
    row = next(line for line in seed_table(tmp_path).splitlines() if line.startswith("| oneconv"))
    cells = [c.strip() for c in row.split("|")]
    assert cells[4] == "98.38 ± 0.05" and cells[5] == "3" and cells[7].endswith("seed=1,2,3`")
    assert report_main(["--seed-table", str(tmp_path)]) == 0
    assert (tmp_path / "seed_table.md").read_text() == seed_table(tmp_path)
    assert report_main(["--seed-table", str(tmp_path / "sepconv")]) == 2
    assert "no completed jobs" in capsys.readouterr().err
