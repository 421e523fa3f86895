"""Batched augmentation: seeded, identity at zero strength, and only ever applied to training batches."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from torchvision.transforms.v2 import functional as TF

from mnist_lit.augment import elastic_displacement, random_affine, random_erase
from mnist_lit.config import check_config
from mnist_lit.data import MNISTDataModule
from mnist_lit.errors import UserError

MEAN, STD = 0.1307, 0.3081
BACKGROUND = -MEAN / STD


def digits(n: int = 8) -> torch.Tensor:
    """A bright square on the normalised black background, off-centre so any motion shows."""
    x = torch.full((n, 1, 28, 28), BACKGROUND)
    x[:, :, 6:14, 8:20] = 2.8
    return x


def augments(dm: MNISTDataModule) -> bool:
    """Whether the data module's batch hook changes a batch of raw digits beyond normalising it."""
    raw = (digits() * STD + MEAN).mul(255).round().clamp(0, 255).squeeze(1).to(torch.uint8)
    images, _ = dm.on_after_batch_transfer((raw, torch.zeros(len(raw), dtype=torch.long)), 0)
    return not torch.equal(images, dm.normalize(raw))


def test_zero_strength_is_the_identity() -> None:
    x = digits()
    out = random_affine(x, degrees=0, translate=0, scale=(1.0, 1.0), fill=BACKGROUND)
    assert torch.allclose(out, x, atol=1e-4)


def test_each_image_moves_differently_and_the_border_stays_background() -> None:
    torch.manual_seed(0)
    x = digits()
    out = random_affine(x, degrees=20, translate=0.15, fill=BACKGROUND)
    assert out.shape == x.shape
    assert not torch.allclose(out, x, atol=1e-3)
    assert len({tuple(o.flatten().round(decimals=3).tolist()) for o in out}) == len(out)
    corners = out[:, :, [0, 0, -1, -1], [0, -1, 0, -1]]  # filled from outside the image
    assert torch.allclose(corners, torch.full_like(corners, BACKGROUND), atol=1e-4)


def test_same_seed_same_augmentation() -> None:
    x = digits()
    torch.manual_seed(3)
    a = random_affine(x)
    torch.manual_seed(3)
    b = random_affine(x)
    torch.manual_seed(4)
    c = random_affine(x)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_elastic_field_is_uniform_noise_blurred_by_a_gaussian_and_scaled_by_alpha() -> None:
    x = digits(4)
    torch.manual_seed(5)
    shift = elastic_displacement(x, alpha=34.0, sigma=4.0)  # [N, H, W, 2] in grid units
    torch.manual_seed(5)
    noise = torch.rand(8, 1, 28, 28) * 2 - 1  # the same draw: x then y of each image
    blurred = TF.gaussian_blur(noise, [25, 25], [4.0, 4.0]).view(4, 2, 28, 28).permute(0, 2, 3, 1)
    assert torch.allclose(shift * 14, blurred * 34, atol=1e-4)  # 14 pixels per grid unit
    assert len({round(s.abs().sum().item(), 3) for s in shift}) == 4  # a field of its own per image


def test_elastic_distortion_moves_the_digit_and_keeps_the_border_background() -> None:
    x = digits()
    torch.manual_seed(0)
    plain = random_affine(x, degrees=0, translate=0, scale=(1.0, 1.0), fill=BACKGROUND)
    torch.manual_seed(0)
    bent = random_affine(x, degrees=0, translate=0, scale=(1.0, 1.0), fill=BACKGROUND, elastic_alpha=34.0)
    assert torch.allclose(plain, x, atol=1e-4) and not torch.allclose(bent, x, atol=0.1)
    assert torch.allclose(bent[..., 24:, :], x[..., 24:, :], atol=1e-4)  # far from the square, background


def test_elastic_p_bends_about_that_share_of_the_images_and_p_1_is_every_image() -> None:
    x = digits(64)
    still = {"degrees": 0, "translate": 0, "scale": (1.0, 1.0), "fill": BACKGROUND, "elastic_alpha": 34.0}
    torch.manual_seed(0)
    every = random_affine(x, **still)
    torch.manual_seed(0)
    same = random_affine(x, **still, elastic_p=1.0)
    assert torch.equal(every, same)  # p=1 is the distortion as it was before the key
    torch.manual_seed(0)
    half = random_affine(x, **still, elastic_p=0.5)
    bent = ~torch.isclose(half, x, atol=1e-4).flatten(1).all(1)
    assert 16 < bent.sum() < 48
    assert torch.allclose(half[~bent], x[~bent], atol=1e-4)  # the others: the affine part only (none here)
    torch.manual_seed(0)
    assert torch.allclose(random_affine(x, **still, elastic_p=0.0), x, atol=1e-4)


@pytest.mark.parametrize("training", [True, False])
def test_only_training_batches_are_augmented(training: bool) -> None:
    dm = MNISTDataModule(augment={"enabled": True, "degrees": 30.0, "translate": 0.2})
    dm.trainer = SimpleNamespace(training=training)
    torch.manual_seed(0)
    assert augments(dm) == training


def test_the_data_module_passes_the_elastic_setting_on() -> None:
    still = {"enabled": True, "degrees": 0.0, "translate": 0.0, "scale": [1.0, 1.0]}
    raw = (digits() * STD + MEAN).mul(255).round().clamp(0, 255).squeeze(1).to(torch.uint8)
    for alpha, p, moved in ((0.0, 1.0, False), (34.0, 1.0, True), (34.0, 0.0, False)):
        dm = MNISTDataModule(augment={**still, "elastic_alpha": alpha, "elastic_sigma": 4.0, "elastic_p": p})
        dm.trainer = SimpleNamespace(training=True)
        images, _ = dm.on_after_batch_transfer((raw, torch.zeros(len(raw), dtype=torch.long)), 0)
        assert torch.allclose(images, dm.normalize(raw), atol=1e-4) != moved, (alpha, p)


def test_random_erasing_blanks_one_rectangle_per_chosen_image_to_the_background() -> None:
    x = torch.full((64, 1, 28, 28), 1.5)  # all ink, so every erased pixel shows
    torch.manual_seed(0)
    out = random_erase(x, p=0.5, scale=(0.02, 0.33), fill=BACKGROUND)
    assert out.shape == x.shape and out.dtype == x.dtype
    erased = out[:, 0] == BACKGROUND
    assert torch.equal(out[~erased.unsqueeze(1)], x[~erased.unsqueeze(1)])  # the rest untouched
    counts = erased.flatten(1).sum(1)
    assert 16 < (counts > 0).sum() < 48  # about half the images
    for mask, count in zip(erased, counts, strict=True):
        if count:  # one solid rectangle: its bounding box is all erased
            rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
            box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
            assert box == count and 0.02 * 784 / 2 <= count <= 0.33 * 784 * 1.3
    assert len({tuple(m.nonzero()[0].tolist()) for m, c in zip(erased, counts, strict=True) if c}) > 10


def test_random_erasing_at_p_0_and_1() -> None:
    x = digits()
    assert torch.equal(random_erase(x, p=0.0, fill=BACKGROUND), x)
    assert (random_erase(torch.ones(32, 1, 28, 28), p=1.0, fill=0.0) == 0).flatten(1).any(1).all()


def test_the_data_module_passes_the_erasing_setting_on() -> None:
    still = {"enabled": True, "degrees": 0.0, "translate": 0.0, "scale": [1.0, 1.0]}
    raw = torch.full((8, 28, 28), 255, dtype=torch.uint8)  # all ink
    for p, erased in ((0.0, False), (1.0, True)):
        dm = MNISTDataModule(augment={**still, "erase_p": p, "erase_scale": [0.1, 0.2]})
        dm.trainer = SimpleNamespace(training=True)
        images, _ = dm.on_after_batch_transfer((raw, torch.zeros(len(raw), dtype=torch.long)), 0)
        assert torch.isclose(images, torch.tensor(BACKGROUND), atol=1e-4).any().item() == erased, p


@pytest.mark.parametrize(
    ("epoch", "max_epochs", "augmented"),
    [(0, 4, True), (1, 4, True), (2, 4, False), (3, 4, False), (3, -1, True)],  # -1: until max_steps
)
def test_the_last_epochs_can_train_on_clean_images(epoch: int, max_epochs: int, augmented: bool) -> None:
    dm = MNISTDataModule(augment={"enabled": True, "degrees": 30.0, "clean_last_epochs": 2})
    dm.trainer = SimpleNamespace(training=True, current_epoch=epoch, max_epochs=max_epochs)
    assert augments(dm) == augmented


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"degrees": 200}, "data.augment.degrees=200"),
        ({"translate": 0.9}, "data.augment.translate=0.9"),
        ({"scale": [1.2, 0.8]}, "data.augment.scale"),
        ({"enabled": "yes"}, "data.augment.enabled='yes'"),
        ({"clean_last_epochs": -1}, "data.augment.clean_last_epochs=-1"),
        ({"elastic_alpha": -3}, "data.augment.elastic_alpha=-3"),
        ({"elastic_sigma": 0}, "data.augment.elastic_sigma=0"),
        ({"elastic_p": 2}, "data.augment.elastic_p=2"),
        ({"scale": 0.5}, "data.augment.scale=0.5"),
        ({"erase_p": 1.5}, "data.augment.erase_p=1.5"),
        ({"erase_scale": [0.3, 0.1]}, "data.augment.erase_scale"),
        ({"erase_scale": [0.0, 0.1]}, "data.augment.erase_scale"),
        ({"erase_scale": 0.2}, "data.augment.erase_scale=0.2"),
    ],
)
def test_out_of_range_settings_are_refused(override: dict, message: str) -> None:
    augment = {"enabled": True, "degrees": 10.0, "translate": 0.1, "scale": [0.9, 1.1], **override}
    cfg = OmegaConf.create({"data": {"augment": augment}})
    with pytest.raises(UserError, match=message.replace("[", r"\[")):
        check_config(cfg)
