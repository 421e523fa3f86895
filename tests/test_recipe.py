"""Training recipe switches: label smoothing of the training loss, and an EMA of the weights."""

from __future__ import annotations

import csv
import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, last_checkpoint, read_metrics, run_cli, run_dirs, train_run
from hydra import compose
from test_bad_input import check_refused, no_torch  # noqa: F401 (a fixture)
from torch import nn
from torch.nn import functional as F

from mnist_lit.config import check_config
from mnist_lit.errors import UserError
from mnist_lit.module import Classifier
from mnist_lit.steps_per_call import GroupedClassifier

# a callback written into each test's folder (the command imports it from there): per training
# batch, the loss at the weights the step starts from, smoothed and plain, and the loss the step
# minimised; the backbone's weights the first batch of each validation and the test start saw
PROBE = """
import json
import torch
from lightning.pytorch.callbacks import Callback
from torch.nn import functional as F


def backbone(pl_module):
    return {k: v.detach().clone() for k, v in pl_module.state_dict().items() if k.startswith("backbone.")}


class Probe(Callback):
    def __init__(self, smoothing=None):
        self.smoothing, self.rows = smoothing, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.smoothing is None:  # a forward pass in training mode would move BatchNorm's statistics
            return
        x, y = batch
        with torch.no_grad():
            logits = pl_module(x)
        smoothed = F.cross_entropy(logits, y, label_smoothing=self.smoothing)
        self.rows.append([trainer.global_step, float(smoothed), float(F.cross_entropy(logits, y))])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.smoothing is not None:
            self.rows[-1].append(float(outputs["loss"]))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0 and not trainer.sanity_checking:
            torch.save(backbone(pl_module), f"val-{trainer.current_epoch}.pt")

    def on_test_start(self, trainer, pl_module):
        torch.save(backbone(pl_module), "test.pt")

    def on_train_end(self, trainer, pl_module):
        with open("losses.json", "w") as f:
            json.dump(self.rows, f)
"""


def probed(cwd: Path, smoothing: float | None = None) -> list[str]:
    """The probe's overrides, its module written into ``cwd``."""
    (cwd / "probe.py").write_text(PROBE)
    value = "null" if smoothing is None else smoothing
    return ["+callbacks.probe._target_=probe.Probe", f"+callbacks.probe.smoothing={value}"]


def backbone_of(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith("backbone.")}


def equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def logged_losses(run_dir: Path) -> dict[int, float]:
    """train/loss_step by step, from the CSV logger's file."""
    with open(run_dir / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return {int(r["step"]): float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")}


# ---- label smoothing ----------------------------------------------------------------------------


@pytest.mark.parametrize("model_class", [Classifier, GroupedClassifier])
def test_label_smoothing_reaches_the_training_loss(model_class: type[Classifier]) -> None:
    extra = {"steps_per_call": 4, "batch_size": 8} if model_class is GroupedClassifier else {}
    optimizer = functools.partial(torch.optim.SGD, lr=0.1)
    logits = torch.tensor([[4.0, 1.0, -2.0], [0.5, 0.2, 3.0], [-1.0, 2.0, 0.0]])
    y = torch.tensor([0, 2, 0])
    plain = model_class(nn.Flatten(), optimizer, num_classes=3, **extra)
    smooth = model_class(nn.Flatten(), optimizer, num_classes=3, label_smoothing=0.1, **extra)
    assert torch.equal(plain.loss(logits, y), F.cross_entropy(logits, y))
    assert torch.equal(smooth.loss(logits, y), F.cross_entropy(logits, y, label_smoothing=0.1))
    # smoothing moves the loss: a tenth of each target spread over the three classes
    by_hand = 0.9 * F.cross_entropy(logits, y) - 0.1 * F.log_softmax(logits, dim=1).mean(dim=1).mean()
    assert smooth.loss(logits, y) == pytest.approx(float(by_hand), rel=1e-6)
    assert abs(float(smooth.loss(logits, y) - plain.loss(logits, y))) > 0.05


BAD_VALUES = [
    ("label_smoothing=1.0", "label_smoothing=1.0 is not allowed: use a number in [0, 1)"),
    ("label_smoothing=-0.1", "label_smoothing=-0.1 is not allowed"),
    ("label_smoothing=lots", "label_smoothing='lots' is not allowed"),
    ("ema.enabled=maybe", "ema.enabled='maybe' is not allowed: use true or false"),
    ("ema.decay=1", "ema.decay=1 is not allowed: use a number in (0, 1)"),
    ("ema.decay=0", "ema.decay=0 is not allowed"),
    ("ema.update_every_n_steps=0", "ema.update_every_n_steps=0 is not allowed: use an integer >= 1"),
    ("ema.update_starting_at_step=-1", "ema.update_starting_at_step=-1 is not allowed"),
    ("ema.update_starting_at_step=2.5", "ema.update_starting_at_step=2.5 is not allowed"),
    ("ema.bn_images=-1", "ema.bn_images=-1 is not allowed: use an integer >= 0"),
    ("ema.bn_images=0.5", "ema.bn_images=0.5 is not allowed"),
    ("test_checkpoint=final", "test_checkpoint='final' is not allowed: use best or last"),
    (
        "data.augment.clean_last_epochs=-1",
        "data.augment.clean_last_epochs=-1 is not allowed: use an integer >= 0",
    ),
    ("data.augment.clean_last_epochs=0.5", "data.augment.clean_last_epochs=0.5 is not allowed"),
]


@pytest.mark.parametrize(("override", "message"), BAD_VALUES, ids=[o for o, _ in BAD_VALUES])
def test_bad_recipe_values_are_refused(override: str, message: str, hydra_conf: None) -> None:
    with pytest.raises(UserError, match="^" + re.escape(message)):
        check_config(compose(config_name="config", overrides=[override]))


def test_good_recipe_values_pass(hydra_conf: None) -> None:
    good = ["label_smoothing=0.1", "ema.enabled=true", "ema.decay=0.9", "ema.update_starting_at_step=100"]
    good += ["test_checkpoint=last", "data.augment.clean_last_epochs=2"]
    check_config(compose(config_name="config", overrides=good))


def test_bad_label_smoothing_stops_before_torch_loads(no_torch: Path, tmp_path: Path) -> None:  # noqa: F811
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["PYTHONPATH"] = os.pathsep.join([str(no_torch), env.get("PYTHONPATH", "")])
    env["CUDA_VISIBLE_DEVICES"] = ""
    env["MNIST_ROOT"] = str(tmp_path / "no_data")
    proc = subprocess.run(
        [sys.executable, "-m", "mnist_lit", "label_smoothing=1.5", "ema.enabled=true"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    check_refused(proc, ["label_smoothing=1.5 is not allowed: use a number in [0, 1)"], tmp_path)


# ---- the two together, whatever steps_per_call, and resumed ---------------------------------------

# twoconv (no BatchNorm, no dropout: the probe's forward pass changes nothing), an epoch schedule
# (a resumed run may be extended), bitwise comparisons (one thread, deterministic kernels)
RECIPE = [o for o in TINY if not o.startswith("trainer.limit_train_batches")]
RECIPE += ["trainer.limit_train_batches=10", "trainer.log_every_n_steps=3", "sched=steplr"]
RECIPE += ["label_smoothing=0.1", "ema.enabled=true", "ema.decay=0.7", "ema.update_starting_at_step=3"]
RECIPE += ["logger=csv", "inspect.enabled=false", "threads=1", "trainer.deterministic=true"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> dict[int, Path]:
    """Two-epoch runs with label smoothing and the EMA, at one and at four batches per call."""
    runs = {}
    for per_call in (1, 4):
        cwd = tmp_path_factory.mktemp(f"straight{per_call}")
        runs[per_call] = train_run(
            cwd, mnist_root, *RECIPE, *probed(cwd, 0.1), "trainer.max_epochs=2", f"steps_per_call={per_call}"
        )
    return runs


def test_smoothing_and_ema_are_the_same_whatever_steps_per_call(straight: dict[int, Path]) -> None:
    one, four = (last_checkpoint(straight[k]) for k in (1, 4))
    assert one["global_step"] == four["global_step"] == 20
    assert read_metrics(straight[4])["steps_per_call"] == 4
    # bitwise the same trained weights, and the same average of them
    assert equal(one["current_model_state"], four["current_model_state"])
    assert equal(one["state_dict"], four["state_dict"])
    assert one["averaging_state"]["n_averaged"] == four["averaging_state"]["n_averaged"] == 17  # steps 3..19
    trained, average = backbone_of(one["current_model_state"]), backbone_of(one["state_dict"])
    assert not equal(trained, average)
    for per_call in (1, 4):
        rows = json.loads((straight[per_call].parents[3] / "losses.json").read_text())  # the run's cwd
        assert len(rows) == 20
        # the loss each step minimised is the smoothed loss at its weights (bitwise: the same forward
        # pass), not the plain one, which it leaves further behind as the network grows confident
        assert all(minimised == smoothed != plain for _, smoothed, plain, minimised in rows)
        assert rows[-1][3] - rows[-1][2] > 0.05
        # and is the loss logged, at the steps it is logged
        logged = logged_losses(straight[per_call])
        assert sorted(logged) == [2, 5, 8, 11, 14, 17]
        by_step = {step: minimised for step, _, _, minimised in rows}
        assert all(value == pytest.approx(by_step[step], rel=1e-6) for step, value in logged.items())
    assert json.loads((straight[1].parents[3] / "losses.json").read_text()) == json.loads(
        (straight[4].parents[3] / "losses.json").read_text()
    )


def test_resumed_ema_run_restores_the_average_and_the_trained_weights(
    straight: dict[int, Path], tmp_path: Path, mnist_root: Path
) -> None:
    first = train_run(
        tmp_path, mnist_root, *RECIPE, *probed(tmp_path), "trainer.max_epochs=1", "steps_per_call=4"
    )
    halfway = last_checkpoint(first)
    assert halfway["global_step"] == 10 and not equal(halfway["state_dict"], halfway["current_model_state"])
    resumed = run_cli(f"ckpt_path={first}", "trainer.max_epochs=2", cwd=tmp_path, mnist_root=mnist_root)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (run_dir,) = run_dirs(tmp_path)  # trained on in its own folder
    got, expected = last_checkpoint(run_dir), last_checkpoint(straight[4])
    assert got["global_step"] == 20
    assert equal(got["current_model_state"], expected["current_model_state"])
    assert equal(got["state_dict"], expected["state_dict"])
    assert got["averaging_state"]["n_averaged"] == expected["averaging_state"]["n_averaged"]


# ---- the EMA of a BatchNorm network: what validation, checkpoints, the test and inference use ------


def test_ema_is_what_validation_checkpoints_test_and_inference_use(tmp_path: Path, mnist_root: Path) -> None:
    from mnist_lit.checkpoint import load_for_inference, load_weights_only
    from mnist_lit.data import load_mnist, split_indices

    overrides = [o for o in TINY if not o.startswith("trainer.limit_train_batches")]
    overrides += ["trainer.limit_train_batches=40", "model=resnet", "sched=constant", "ema.enabled=true"]
    overrides += ["ema.decay=0.8", "data.val_size=500", "data.eval_batch_size=250", "logger=csv"]
    overrides += ["inspect.enabled=false", "threads=1"]
    run_dir = train_run(tmp_path, mnist_root, *overrides, *probed(tmp_path))
    best = Path(read_metrics(run_dir)["best_checkpoint"])
    ckpt = load_weights_only(best)  # as evaluate, predict and export read it
    average, trained = backbone_of(ckpt["state_dict"]), backbone_of(ckpt["current_model_state"])
    assert not equal(average, trained)  # the checkpoint's weights are the average, not the trained ones
    # BatchNorm's running statistics are averaged too: neither the trained network's nor the initial ones
    stats = [k for k in average if k.endswith("running_var")]
    assert stats and all(not torch.equal(average[k], trained[k]) for k in stats)
    assert all(not torch.equal(average[k], torch.ones_like(average[k])) for k in stats)
    # validation and the end-of-fit test ran on the average
    assert equal(torch.load(tmp_path / "val-0.pt"), average)
    assert equal(torch.load(tmp_path / "test.pt"), average)
    # evaluate, predict and export load these weights
    loaded = load_for_inference(run_dir)
    assert equal({f"backbone.{k}": v for k, v in loaded.backbone.state_dict().items()}, average)
    # the logged validation accuracy is the average's, with its own BatchNorm statistics, on the val set
    images, labels = load_mnist(mnist_root, train=True)
    _, val_idx = split_indices(len(labels), 500, 42)
    predicted = loaded.logits(images[val_idx], torch.device("cpu"), 250).argmax(dim=1)
    accuracy = float((predicted == labels[val_idx]).float().mean())
    assert accuracy == pytest.approx(read_metrics(run_dir)["val/acc_best"], abs=1e-6)
    assert accuracy > 0.5  # sensible statistics: far above chance


# ---- ema.bn_images: BatchNorm statistics measured for the averaged weights ---------------------------

# a small BatchNorm network, one thread and deterministic kernels, so that runs compare bitwise
BN_RECIPE = [o for o in TINY if not o.startswith("trainer.limit_train_batches")]
BN_RECIPE += ["trainer.limit_train_batches=12", "model=vggnet", "model.widths=[4,8]", "sched=steplr"]
BN_RECIPE += ["ema.enabled=true", "ema.decay=0.8", "ema.bn_images=300", "data.val_size=500"]
BN_RECIPE += ["data.eval_batch_size=250", "logger=csv", "inspect.enabled=false", "threads=1"]
BN_RECIPE += ["trainer.deterministic=true"]


def bn_stats(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.endswith(("running_mean", "running_var"))}


def test_bn_images_measures_the_statistics_validation_checkpoints_and_the_test_use(
    tmp_path: Path, mnist_root: Path
) -> None:
    from torch.optim.swa_utils import update_bn

    from mnist_lit.averaging import OWN_STATISTICS
    from mnist_lit.checkpoint import load_for_inference
    from mnist_lit.data import load_mnist, normalize, split_indices

    run_dir = train_run(
        tmp_path, mnist_root, *BN_RECIPE, "trainer.max_epochs=2", "test_checkpoint=last", *probed(tmp_path)
    )
    ckpt = last_checkpoint(run_dir)
    handed_on, own = ckpt["state_dict"], ckpt[OWN_STATISTICS]
    # the file hands on the average's weights with statistics measured for them, not the average's own
    assert bn_stats(own).keys() == bn_stats(handed_on).keys() and bn_stats(own)
    assert all(not torch.equal(own[k], handed_on[k]) for k in bn_stats(own))
    # measured again here: the average's weights and own statistics, then update_bn over the first 300
    # images of the run's training split in the callback's batches (data.eval_batch_size)
    loaded = load_for_inference(run_dir)
    net = loaded.backbone
    with torch.no_grad():
        for name, value in net.state_dict().items():
            if f"backbone.{name}" in own:
                value.copy_(own[f"backbone.{name}"])
    images, labels = load_mnist(mnist_root, train=True)
    train_idx, val_idx = split_indices(len(labels), 500, 42)
    clean = normalize(images[train_idx[:300]], loaded.mean, loaded.std)
    update_bn([clean[:250], clean[250:]], net)
    for name, value in bn_stats(net.state_dict()).items():
        torch.testing.assert_close(value, handed_on[f"backbone.{name}"], rtol=1e-5, atol=1e-6)
    # the last validation and the test ran on those statistics; evaluate and predict load them
    assert equal(torch.load(tmp_path / "val-1.pt"), backbone_of(handed_on))
    assert equal(torch.load(tmp_path / "test.pt"), backbone_of(handed_on))
    reloaded = load_for_inference(run_dir)
    predicted = reloaded.logits(images[val_idx], torch.device("cpu"), 250).argmax(dim=1)
    assert float((predicted == labels[val_idx]).float().mean()) > 0.5


def test_bn_images_changes_nothing_of_the_average_whatever_steps_per_call_or_resume(
    tmp_path: Path, mnist_root: Path
) -> None:
    """Recalibrated statistics are a view of the average: the average carries on, batch by batch, as
    without them; a run resumed from a checkpoint that holds them ends where the straight run does."""
    from mnist_lit.averaging import OWN_STATISTICS

    runs = {}
    for name, extra in (("one", ["steps_per_call=1"]), ("four", ["steps_per_call=4"]), ("plain", [])):
        cwd = tmp_path / name
        cwd.mkdir()
        bn = ["ema.bn_images=0"] if name == "plain" else []
        run_dir = train_run(cwd, mnist_root, *BN_RECIPE, "trainer.max_epochs=2", *extra, *bn)
        runs[name] = last_checkpoint(run_dir)
    cwd = tmp_path / "resumed"
    cwd.mkdir()
    first = train_run(cwd, mnist_root, *BN_RECIPE, "trainer.max_epochs=1", "steps_per_call=4")
    resumed = run_cli(f"ckpt_path={first}", "trainer.max_epochs=2", cwd=cwd, mnist_root=mnist_root)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    runs["resumed"] = last_checkpoint(run_dirs(cwd)[0])
    one = runs["one"]
    assert one["global_step"] == 24
    for name in ("four", "resumed"):
        got = runs[name]
        assert equal(got["current_model_state"], one["current_model_state"]), name
        assert equal(got["state_dict"], one["state_dict"]), name
        assert equal(got[OWN_STATISTICS], one[OWN_STATISTICS]), name
    # the average (weights and own statistics) is the one a run without recalibration keeps
    plain = runs["plain"]
    assert OWN_STATISTICS not in plain
    own = {**one["state_dict"], **one[OWN_STATISTICS]}
    assert equal(own, plain["state_dict"])
    # and so are the trained weights (validation differs: it measures the recalibrated network)
    assert equal(backbone_of(one["current_model_state"]), backbone_of(plain["current_model_state"]))


# ---- the ema: block, built ------------------------------------------------------------------------


def test_ema_block_builds_one_average_of_its_settings(hydra_conf: None) -> None:
    from mnist_lit.averaging import ExponentialAverage
    from mnist_lit.train import extra_callbacks

    settings = ["ema.enabled=true", "ema.decay=0.9", "ema.update_every_n_steps=2"]
    cfg = compose(config_name="config", overrides=[*settings, "ema.update_starting_at_step=5"])
    (average,) = [c for c in extra_callbacks(cfg) if isinstance(c, ExponentialAverage)]
    assert (average.update_every_n_steps, average.update_starting_at_step) == (2, 5)
    assert [average.should_update(step_idx=i) for i in range(3, 9)] == [
        False,
        False,
        False,
        True,
        False,
        True,
    ]
    assert not any(isinstance(c, ExponentialAverage) for c in extra_callbacks(compose(config_name="config")))
    both = compose(
        config_name="config",
        overrides=["ema.enabled=true", "+callbacks.swa._target_=lightning.pytorch.callbacks.WeightAveraging"],
    )
    with pytest.raises(UserError, match="more than one weight average"):
        extra_callbacks(both)


def test_an_average_not_yet_started_is_the_trained_weights() -> None:
    """Before ``update_starting_at_step`` Lightning's average is the initial weights; here it follows
    the trained ones until its first update, which then starts it from that step's weights."""
    from mnist_lit.averaging import ExponentialAverage

    module = Classifier(
        nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), functools.partial(torch.optim.SGD, lr=0.1)
    )
    average = ExponentialAverage(decay=0.5, update_starting_at_step=100)
    average.setup(None, module, "fit")  # type: ignore[arg-type]
    initial = {k: v.clone() for k, v in module.state_dict().items()}
    with torch.no_grad():
        module.backbone[1].weight.add_(1.0)  # "trained"
    trained = {k: v.clone() for k, v in module.state_dict().items()}
    checkpoint = {"state_dict": module.state_dict()}
    average.on_save_checkpoint(None, module, checkpoint)  # type: ignore[arg-type]
    assert equal(backbone_of(checkpoint["state_dict"]), backbone_of(trained))
    assert int(checkpoint["averaging_state"]["n_averaged"]) == 0  # not started: nothing counted
    average.on_train_end(None, module)  # type: ignore[arg-type]
    assert equal(backbone_of(module.state_dict()), backbone_of(trained))
    assert not equal(backbone_of(module.state_dict()), backbone_of(initial))
    # the first update starts the average from the weights of its step
    with torch.no_grad():
        module.backbone[1].weight.add_(1.0)
    now = module.backbone[1].weight.detach().clone()
    average._average_model.update_parameters(module)
    assert torch.equal(average._average_model.module.backbone[1].weight, now)


def test_warmed_up_average_follows_the_weights_first_and_remembers_later() -> None:
    """With ``ema.warmup`` (the default) an update after n earlier ones mixes in
    1 - min(decay, (1+n)/(10+n)) of the weights: 9/11 right after the first (a copy), down to
    1 - decay."""
    from torch.optim.swa_utils import AveragedModel

    from mnist_lit.averaging import ExponentialAverage

    net = nn.Linear(1, 1, bias=False)
    for warmup, first_mix in ((True, 9 / 11), (False, 0.01)):
        average = ExponentialAverage(decay=0.99, warmup=warmup)
        kept = AveragedModel(net, **average._kwargs)  # what Lightning builds at setup
        with torch.no_grad():
            net.weight.fill_(0.0)
            kept.update_parameters(net)  # the first update copies
            net.weight.fill_(1.0)
            kept.update_parameters(net)  # n_averaged = 1
        assert float(kept.module.weight.detach()) == pytest.approx(first_mix, rel=1e-5), warmup
    average = ExponentialAverage(decay=0.9)  # reached after 80 updates
    kept = AveragedModel(net, **average._kwargs)
    mixes = []
    with torch.no_grad():
        net.weight.fill_(1.0)
        for _ in range(400):  # the average at 0 and the weights at 1: what an update mixes in
            kept.module.weight.fill_(0.0)
            kept.update_parameters(net)
            mixes.append(float(kept.module.weight))
    assert (
        mixes[0] == 1.0
        and mixes[1] == pytest.approx(9 / 11, rel=1e-5)
        and mixes[-1] == pytest.approx(0.1, rel=1e-4)
    )
    assert all(a >= b for a, b in zip(mixes, mixes[1:], strict=False))  # it only settles
