"""TensorBoard inspection views: every image and scalar of a real short run, read back from its events."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import read_metrics, run_cli
from PIL import Image

from mnist_lit import events as logged
from mnist_lit.callbacks import PER_CLASS, Inspection, conv_stages, first_conv, from_config
from mnist_lit.models.resnet import ResNet8
from mnist_lit.models.twoconv import TwoConv

IMAGES = {
    "inspect/train_batch",
    "inspect/conv1_filters",
    "inspect/feature_maps/stage1",
    "inspect/feature_maps/stage2",
    "inspect/val_confusion_matrix",
    "inspect/test_confusion_matrix",
    "inspect/test_misclassified",
}


@pytest.fixture(scope="module")
def events(trained_run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(trained_run / "tb"), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_every_image_tag_is_a_readable_picture(events) -> None:
    assert IMAGES <= set(events.Tags()["images"])
    for tag in IMAGES:
        event = events.Images(tag)[-1]
        img = Image.open(io.BytesIO(event.encoded_image_string))
        assert img.size == (event.width, event.height)
        assert img.width >= 200 and img.height >= 60, tag
        # a picture, not a blank: many grey levels
        assert sum(1 for n in img.convert("L").histogram() if n) > 20, tag


def test_feature_maps_show_each_conv_stage_of_the_fixed_digits(events) -> None:
    stage2 = Image.open(io.BytesIO(events.Images("inspect/feature_maps/stage2")[-1].encoded_image_string))
    stage1 = Image.open(io.BytesIO(events.Images("inspect/feature_maps/stage1")[-1].encoded_image_string))
    # twoconv: stage 1 has 10 channels, stage 2 has 20 (16 shown): one column per channel plus the digit
    assert stage2.width > stage1.width
    assert stage1.height == stage2.height  # one row per fixed digit, the same 5 digits in both


def test_per_class_scalars_agree_with_test_accuracy(events, trained_run: Path, mnist_root: Path) -> None:
    from mnist_lit.data import load_mnist

    scalars = set(events.Tags()["scalars"])
    for split in ("val", "test"):
        assert {f"{PER_CLASS}/{split}_acc_{d}" for d in range(10)} <= scalars
    assert {f"pr_curve/{split}_{d}" for split in ("val", "test") for d in range(10)} <= set(
        events.Tags()["tensors"]
    )
    # the run tested the first 500 test images: per-class accuracies weighted by class counts
    _, labels = load_mnist(mnist_root, train=False, download=False)
    counts = torch.bincount(labels[:500], minlength=10)
    per_class = torch.tensor([events.Scalars(f"{PER_CLASS}/test_acc_{d}")[-1].value for d in range(10)])
    overall = float((per_class * counts).sum() / counts.sum())
    assert overall == pytest.approx(read_metrics(trained_run)["test/acc"], abs=1e-5)


def test_misclassified_grid_counts_the_run_mistakes(events, trained_run: Path) -> None:
    acc = read_metrics(trained_run)["test/acc"]
    mistakes = round((1 - acc) * 500)
    assert 0 < mistakes <= 60
    img = Image.open(io.BytesIO(events.Images("inspect/test_misclassified")[-1].encoded_image_string))
    shown = min(mistakes, 32)  # inspect.max_misclassified=32 in the shared run
    rows = -(-shown // 10)
    # each row is a 56 px digit plus its title; the heading sits above
    assert rows * 56 < img.height < rows * 80 + 30


def test_conv_helpers_find_the_stages() -> None:
    twoconv = TwoConv()
    assert len(conv_stages(twoconv)) == 2
    assert first_conv(twoconv).out_channels == 10
    assert len(conv_stages(ResNet8())) >= 4  # stem and three residual stages


def test_from_config_switch() -> None:
    assert from_config({"enabled": False}) == []
    assert from_config(None) == []
    (cb,) = from_config({"enabled": True, "every_n_epochs": 3, "pr_curves": False})
    assert isinstance(cb, Inspection) and cb.every_n_epochs == 3 and not cb.pr_curves


def test_views_come_every_n_epochs_and_at_the_last() -> None:
    cb = Inspection(every_n_epochs=3)
    due = [
        epoch + 1
        for epoch in range(8)
        if cb._due(SimpleNamespace(sanity_checking=False, current_epoch=epoch, max_epochs=8))
    ]
    assert due == [3, 6, 8]
    assert not cb._due(SimpleNamespace(sanity_checking=True, current_epoch=2, max_epochs=8))


def test_the_test_outcome_is_logged_as_data_for_the_report(events, trained_run: Path) -> None:
    from tensorboard.util.tensor_util import make_ndarray

    def tensor(tag: str):
        return make_ndarray(events.Tensors(tag)[-1].tensor_proto)

    cm = tensor(logged.TEST_CONFUSION)
    assert cm.shape == (10, 10) and int(cm.sum()) == 500  # the run tested the first 500 test images
    assert int(cm.trace()) == round(read_metrics(trained_run)["test/acc"] * 500)
    pixels, predictions = tensor(logged.TEST_WRONG_PIXELS), tensor(logged.TEST_WRONG_LABELS)
    shown = min(int(cm.sum() - cm.trace()), 32)  # inspect.max_misclassified=32
    assert pixels.shape == (shown, 28, 28) and predictions.shape == (shown, 3)
    assert 0 <= pixels.min() and pixels.max() == 255  # the digits' own pixels, not normalised values
    predicted, true, confidence = predictions.T
    assert (predicted != true).all() and (confidence[:-1] >= confidence[1:]).all()  # most confident first
    for p, t in zip(predicted.astype(int), true.astype(int), strict=True):
        assert cm[t, p] > 0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("inspect.every_n_epochs=0", "inspect.every_n_epochs=0 is not allowed"),
        ("inspect.feature_digits=11", "inspect.feature_digits=11 is not allowed"),
        ("inspect.enabled=maybe", "inspect.enabled='maybe' is not allowed"),
    ],
)
def test_bad_inspect_config_is_refused(override: str, message: str, tmp_path: Path) -> None:
    result = run_cli(override, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
