"""python -m mnist_lit.predict on user-style images made from real test digits."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from PIL import Image

from mnist_lit.predict import SIDE, to_mnist


def user_images(folder: Path, mnist_root: Path) -> dict[str, int]:
    """The first 10 test digits as people save them: 100x100, inverted, RGB, alpha; name -> label."""
    from mnist_lit.data import load_mnist

    images, labels = load_mnist(mnist_root, train=False, download=False)
    folder.mkdir()
    truth = {}
    for i in range(10):
        digit = Image.fromarray(images[i].numpy(), mode="L").resize((100, 100), Image.BILINEAR)
        paper = Image.eval(digit, lambda p: 255 - p)  # dark ink on white
        kind = i % 4
        if kind == 0:
            img = paper
        elif kind == 1:  # RGB: dark blue ink on cream
            img = Image.merge(
                "RGB", [Image.eval(paper, lambda p, lo=lo: lo + p * (255 - lo) // 255) for lo in (20, 30, 90)]
            )
        elif kind == 2:  # black ink on a transparent canvas
            img = Image.new("RGBA", digit.size, (0, 0, 0, 0))
            img.putalpha(digit)
        else:  # white on black, RGB with an opaque alpha channel
            img = Image.merge("RGBA", [digit, digit, digit, Image.new("L", digit.size, 255)])
        name = f"{i}_{kind}.png"
        img.save(folder / name)
        truth[str(folder / name)] = int(labels[i])
    return truth


def test_predict_reads_user_images_and_survives_bad_files(
    trained_run: Path, mnist_root: Path, tmp_path: Path
) -> None:
    truth = user_images(tmp_path / "digits", mnist_root)
    (tmp_path / "digits" / "empty.png").write_bytes(b"")
    (tmp_path / "digits" / "notes.txt").write_text("not a picture\n")
    # over Pillow's pixel limit (it warns), and over twice that (it refuses): tiny files, all white
    Image.new("1", (9500, 9500)).save(tmp_path / "digits" / "bomb.png")
    Image.new("1", (13500, 13500)).save(tmp_path / "digits" / "huge.png")
    Image.effect_noise((200, 200), 60).save(tmp_path / "noise.png")
    (tmp_path / "digits" / "cut.png").write_bytes((tmp_path / "noise.png").read_bytes()[:2000])
    preview = tmp_path / "seen.png"
    result = run_cli(
        f"ckpt={trained_run}", f"images={tmp_path / 'digits'}", f"preview={preview}", "threads=1",
        cwd=tmp_path, module="mnist_lit.predict",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]  # some files could not be read
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 10
    right = 0
    for line in lines:
        name, digit, prob = line.split()
        assert 0.0 < float(prob) <= 1.0
        right += int(digit) == truth[name]
    assert right >= 9, result.stdout
    assert f"{tmp_path / 'digits' / 'empty.png'}: empty file" in result.stderr
    assert f"{tmp_path / 'digits' / 'notes.txt'}: not an image" in result.stderr
    assert (
        f"{tmp_path / 'digits' / 'bomb.png'}: Pillow warns about it (DecompressionBombWarning"
        in result.stderr
    )
    assert f"{tmp_path / 'digits' / 'huge.png'}: refused by Pillow" in result.stderr
    assert f"{tmp_path / 'digits' / 'cut.png'}: damaged image" in result.stderr
    assert "Traceback" not in result.stderr
    assert not re.search(r"\.py:\d+: \w*Warning", result.stderr)  # no Python warning printed
    with Image.open(preview) as img:
        assert img.width > 10 * 56


def test_missing_images_are_named(trained_run: Path, tmp_path: Path) -> None:
    result = run_cli(
        f"ckpt={trained_run}", "images=nothing_here/*.png", cwd=tmp_path, module="mnist_lit.predict"
    )
    assert result.returncode == 2
    assert "images='nothing_here/*.png': no file matches" in result.stderr


def framed(img: torch.Tensor) -> tuple[float, float, int, int]:
    """Centre of mass (row, column) and ink bounding box (height, width) of a 28x28 uint8 digit."""
    x = img.float()
    ys = torch.arange(SIDE, dtype=torch.float32)
    cy = float((x.sum(1) * ys).sum() / x.sum())
    cx = float((x.sum(0) * ys).sum() / x.sum())
    rows, cols = (x > 50).any(1).nonzero().flatten(), (x > 50).any(0).nonzero().flatten()
    return cy, cx, int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def test_to_mnist_crops_scales_and_centres_like_mnist() -> None:
    # a thick off-centre "1" on a large white page, drawn dark
    page = Image.new("L", (400, 300), 255)
    page.paste(0, (40, 30, 70, 190))
    digit = to_mnist(page)
    assert digit.shape == (28, 28) and digit.dtype == torch.uint8
    cy, cx, h, w = framed(digit)
    assert abs(cy - 13.5) <= 1 and abs(cx - 13.5) <= 1
    assert h == 20 and 3 <= w <= 5  # longer side scaled to 20 px, aspect kept
    # the same digit light on dark gives the same result
    light = Image.eval(page, lambda p: 255 - p)
    assert torch.equal(to_mnist(light), digit)


def test_blank_image_is_not_a_digit() -> None:
    from mnist_lit.predict import Unreadable

    with pytest.raises(Unreadable, match="blank"):
        to_mnist(Image.new("RGB", (50, 50), (200, 200, 200)))
