"""The seeded split, whole-batch loading, normalisation, and the message when MNIST is missing."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch
from hydra import compose

from mnist_lit.config import check_config
from mnist_lit.data import RAW_FILES, BatchedTensorLoader, MNISTDataModule, load_mnist, split_indices
from mnist_lit.errors import UserError
from mnist_lit.models import SimpleCNN


def test_split_sizes_disjoint_and_complete() -> None:
    train, val = split_indices(60_000, 5_000, seed=42)
    assert (len(train), len(val)) == (55_000, 5_000)
    assert not set(train.tolist()) & set(val.tolist())
    assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(60_000))


def test_split_is_seeded() -> None:
    a_train, a_val = split_indices(60_000, 5_000, seed=1)
    b_train, b_val = split_indices(60_000, 5_000, seed=1)
    c_train, c_val = split_indices(60_000, 5_000, seed=2)
    assert torch.equal(a_val, b_val) and torch.equal(a_train, b_train)
    assert not torch.equal(a_val, c_val)


@pytest.mark.parametrize("val_size", [0, 60_000, -3])
def test_val_sizes_outside_the_training_set_are_refused(hydra_conf: None, val_size: int) -> None:
    """Checked with the config, before torch loads (split_indices itself trusts it)."""
    with pytest.raises(
        UserError, match=rf"data.val_size={val_size} is not allowed: use an integer in 1..59999"
    ):
        check_config(compose(config_name="config", overrides=[f"data.val_size={val_size}"]))


def test_loader_yields_whole_batches_and_keeps_the_tail() -> None:
    x = torch.arange(10, dtype=torch.uint8).view(10, 1, 1).expand(10, 28, 28).contiguous()
    y = torch.arange(10)
    batches = list(BatchedTensorLoader(x, y, batch_size=4, shuffle=False, drop_last=False))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    assert torch.equal(torch.cat([b[1] for b in batches]), y)
    assert batches[0][0].dtype == torch.uint8  # normalisation happens after the transfer, batched
    dropped = list(BatchedTensorLoader(x, y, batch_size=4, shuffle=True, drop_last=True))
    assert [len(b[1]) for b in dropped] == [4, 4]


def test_a_last_training_batch_of_one_image_is_left_out(mnist_root: Path) -> None:
    """Batch norm cannot train on one value per channel: SimpleCNN's BatchNorm1d head would stop
    the run at the end of its first epoch. Each epoch's order differs, so no image is always out."""
    dm = MNISTDataModule(root=str(mnist_root), batch_size=64, val_size=60_000 - (64 * 859 + 1))
    dm.setup("fit")
    assert len(dm.train_idx) == 64 * 859 + 1
    loader = dm.train_dataloader()
    assert len(loader) == 859 and len(torch.cat([y for _, y in loader])) == 64 * 859
    left_out = []
    for epoch in (0, 1):
        loader.batches.set_epoch(epoch)
        served = torch.cat(list(loader.batches))
        assert len(served) == 64 * 859 == len(served.unique())
        left_out.append(set(range(64 * 859 + 1)) - set(served.tolist()))
    assert len(left_out[0]) == len(left_out[1]) == 1 and left_out[0] != left_out[1]
    net = SimpleCNN(kernel=7, widths=[2, 2, 2, 2]).train()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        net(torch.zeros(1, 1, 28, 28))
    dm = MNISTDataModule(root=str(mnist_root), batch_size=64, val_size=60_000 - (64 * 859 + 2))
    dm.setup("fit")
    assert [len(y) for _, y in dm.train_dataloader()][-1] == 2  # two images still make a batch


def test_normalize_uses_mnist_statistics() -> None:
    dm = MNISTDataModule()
    images = torch.tensor([[0, 255]], dtype=torch.uint8).view(1, 1, 2).expand(2, 1, 2)
    out, labels = dm.on_after_batch_transfer((images, torch.tensor([3, 4])), 0)
    assert out.shape == (2, 1, 1, 2) and out.dtype == torch.float32
    assert out[0, 0, 0, 0].item() == pytest.approx(-0.1307 / 0.3081)
    assert out[0, 0, 0, 1].item() == pytest.approx((1 - 0.1307) / 0.3081)
    assert labels.tolist() == [3, 4]


def test_real_mnist_split_and_untouched_test_set(mnist_root: Path) -> None:
    dm = MNISTDataModule(
        root=str(mnist_root), batch_size=64, eval_batch_size=3000, val_size=5000, drop_last=True
    )
    dm.setup("fit")
    dm.setup("test")
    train_labels = torch.cat([y for _, y in dm.train_dataloader()])
    val_labels = torch.cat([y for _, y in dm.val_dataloader()])
    test_batches = list(dm.test_dataloader())
    assert len(val_labels) == 5_000
    assert len(train_labels) == (55_000 // 64) * 64  # drop_last applies to training only
    assert [len(y) for _, y in test_batches] == [3000, 3000, 3000, 1000]  # all 10,000, none dropped
    test_images = torch.cat([x for x, _ in test_batches])
    assert torch.equal(test_images, load_mnist(mnist_root, train=False, download=False)[0])
    # validation images come from the 60k training file only
    train_images = load_mnist(mnist_root, train=True, download=False)[0]
    assert torch.equal(torch.cat([x for x, _ in dm.val_dataloader()]), train_images[dm.val_idx])


def write_idx(folder: Path, n_train: int = 12, n_test: int = 5) -> None:
    """A tiny MNIST in torchvision's layout: the four IDX files with made-up digits."""
    raw = folder / "MNIST" / "raw"
    raw.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
        labels = torch.arange(n, dtype=torch.uint8) % 10
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 0x803, n, 28, 28) + images.numpy().tobytes()
        )
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 0x801, n) + labels.numpy().tobytes()
        )


def test_loads_idx_files_into_one_uint8_tensor(tmp_path: Path) -> None:
    write_idx(tmp_path)
    # small well-formed IDX files, not the official ones: their checksum check is turned off
    images, labels = load_mnist(tmp_path, train=True, download=False, verify=False)
    assert images.shape == (12, 28, 28) and images.dtype == torch.uint8
    assert labels.tolist() == [i % 10 for i in range(12)]
    assert load_mnist(tmp_path, train=False, download=False, verify=False)[0].shape == (5, 28, 28)


def test_missing_data_names_root_files_and_fix(tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        load_mnist(tmp_path / "nowhere", train=True, download=False)
    message = str(err.value)
    assert str(tmp_path / "nowhere") in message
    assert all(name in message for name in RAW_FILES)
    assert "data.root" in message and "MNIST_ROOT" in message
