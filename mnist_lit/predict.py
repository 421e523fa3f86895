"""``python -m mnist_lit.predict ckpt=PATH images=...``: the digit in each of the user's own images.

A photo or drawing is not an MNIST digit until it looks like one: light ink on a black
background, cropped to the ink, scaled so its longer side is 20 pixels, and placed in a 28x28
frame with its centre of mass in the middle. This module does that to any image Pillow reads
(grayscale, RGB, palette, with or without alpha, either polarity), then predicts in one batch,
with one checkpoint or an ensemble of several (the mean of their probabilities; ``ckpt=`` as for
evaluate: a sweep folder or a list).
"""

from __future__ import annotations

import glob
import logging
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig, ListConfig

from mnist_lit.cli import COMMON, model_override, run_command, torch_device, user_errors
from mnist_lit.config import check_rules
from mnist_lit.ensemble import FORMS, ckpt_value, load_models, quote_ckpt_list
from mnist_lit.errors import UserError

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

RULES = {
    **COMMON,
    "ckpt": (ckpt_value, FORMS),
    "invert": (lambda x: x in ("auto", True, False), "auto, true or false"),
    "preview": (lambda x: x is None or (isinstance(x, str) and x.endswith(".png")), "null or a .png path"),
}
SIDE, BOX = 28, 20  # MNIST: digits fitted into a 20x20 box inside a 28x28 frame
INK = 0.2  # a pixel is part of the digit from this fraction of the brightest ink upwards
FAINT = 0.1  # below this contrast to the background an image is taken to be blank


class Unreadable(Exception):
    """A file that cannot be predicted: empty, not an image, or an image with nothing on it."""


@dataclass
class Prediction:
    name: str
    digit: int
    probability: float


def expand(images: Any) -> list[Path]:
    """``images=`` as given (a file, folder, glob or list of them) -> the files, in a stable order."""
    items = list(images) if isinstance(images, list | tuple | ListConfig) else [images]
    files: list[Path] = []
    for item in items:
        p = Path(str(item)).expanduser()
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
            if not found:
                raise UserError(f"images={str(item)!r}: the folder holds no files")
            files += found
        elif p.exists():
            files.append(p)
        elif any(ch in str(item) for ch in "*?["):
            matched = sorted(Path(m) for m in glob.glob(str(p)) if Path(m).is_file())
            if not matched:
                raise UserError(f"images={str(item)!r}: no file matches this pattern")
            files += matched
        else:
            raise UserError(f"images={str(item)!r}: no such file or folder")
    return files


def open_image(path: Path) -> Image.Image:
    """The image in ``path``, fully decoded, or Unreadable saying why not.

    What Pillow warns about (a decompression bomb, a palette it has to guess at) is refused like
    what it cannot read: the message names the file, and the other images are still predicted.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if path.stat().st_size == 0:
        raise Unreadable("empty file")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", module="PIL")
            with Image.open(path) as img:
                img.load()
                return ImageOps.exif_transpose(img)
    except UnidentifiedImageError as err:
        raise Unreadable("not an image Pillow can read") from err
    except Warning as err:
        raise Unreadable(f"Pillow warns about it ({type(err).__name__}: {err})") from err
    except Image.DecompressionBombError as err:
        raise Unreadable(f"refused by Pillow ({err})") from err
    except (OSError, SyntaxError, ValueError) as err:  # truncated or damaged image data
        raise Unreadable(f"damaged image ({err})") from err


def _plane(img: Image.Image) -> torch.Tensor:
    """An 8-bit single-band image as float [H, W] in [0, 1]."""
    import torch

    data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    return data.view(img.height, img.width).float() / 255.0


def border(x: torch.Tensor) -> torch.Tensor:
    """The pixels on the outer frame of [H, W]: where the background is, in any sensible photo."""
    import torch

    return torch.cat([x[0], x[-1], x[:, 0], x[:, -1]])


def grayscale(img: Image.Image) -> torch.Tensor:
    """Luminance [H, W] in [0, 1], transparent parts filled with the colour the ink is not."""
    if img.mode in ("P", "PA") or "transparency" in img.info:
        img = img.convert("RGBA")
    gray = _plane(img.convert("L"))
    if img.mode not in ("RGBA", "LA"):
        return gray
    alpha = _plane(img.getchannel("A"))
    if bool((alpha >= 1).all()):
        return gray
    # ink drawn on a transparent canvas: fill the canvas with whatever contrasts with the ink
    ink_level = float((gray * alpha).sum() / alpha.sum().clamp_min(1e-6))
    background = 1.0 if ink_level < 0.5 else 0.0
    return alpha * gray + (1 - alpha) * background


def to_mnist(img: Image.Image, invert: str | bool = "auto") -> torch.Tensor:
    """Any image of one digit -> uint8 [28, 28] framed the way MNIST frames its digits."""
    import torch
    from torchvision.transforms.v2 import functional as TF

    gray = grayscale(img)
    if invert == "auto":
        invert = bool(border(gray).median() > 0.5)  # a light background: dark ink on paper
    if invert:
        gray = 1 - gray
    ink = (gray - border(gray).median()).clamp_min(0)
    if float(ink.max()) < FAINT:
        raise Unreadable("no digit found: the image is blank")
    ink = ink / ink.max()
    rows = (ink > INK).any(dim=1).nonzero().flatten()
    cols = (ink > INK).any(dim=0).nonzero().flatten()
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = crop.shape
    scale = BOX / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    digit = TF.resize(crop[None], [nh, nw], antialias=True)[0].clamp(0, 1)
    # centre of mass to the middle of the frame, without pushing any ink out of it
    ys, xs = torch.arange(nh, dtype=torch.float32), torch.arange(nw, dtype=torch.float32)
    mass = digit.sum().clamp_min(1e-6)
    cy, cx = float((digit.sum(dim=1) * ys).sum() / mass), float((digit.sum(dim=0) * xs).sum() / mass)
    top = min(max(round((SIDE - 1) / 2 - cy), 0), SIDE - nh)
    left = min(max(round((SIDE - 1) / 2 - cx), 0), SIDE - nw)
    frame = torch.zeros(SIDE, SIDE)
    frame[top : top + nh, left : left + nw] = digit
    return (frame * 255).round().to(torch.uint8)


def predict(cfg: DictConfig) -> list[Prediction | tuple[Path, str]]:
    """For each file in order: its Prediction, or (file, reason) when it could not be read."""
    files = expand(cfg.images)  # before torch loads, so a mistyped path answers at once
    model = load_models(cfg.ckpt, model_override(cfg))  # ckpt= paths too, then torch loads
    import torch

    device = torch_device(cfg.device, cfg.threads)
    model.to(device)
    results: list[Prediction | tuple[Path, str]] = []
    read: list[tuple[int, Path, torch.Tensor]] = []
    for path in files:
        try:
            read.append((len(results), path, to_mnist(open_image(path), cfg.invert)))
            results.append((path, ""))
        except Unreadable as why:
            results.append((path, str(why)))
    if not read:
        return results
    digits = torch.stack([d for _, _, d in read])
    probs = model.logits(digits, device, batch_size=512).softmax(1)
    conf, pred = probs.max(dim=1)
    predictions = []
    for (i, path, _), p, c in zip(read, pred.tolist(), conf.tolist(), strict=True):
        results[i] = Prediction(str(path), p, c)
        predictions.append(results[i])
    if cfg.preview:
        from mnist_lit import render

        titles = [f"{p.digit} {p.probability:.0%}" for p in predictions]
        grid = render.titled_grid(digits, titles, ncol=10, cell=56, caption=16)
        render.save_png(
            render.headed(grid, "what the network saw: predicted digit, probability"), cfg.preview
        )
    return results


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    """One line per file: its name, the predicted digit and its probability (exit 1 if any failed)."""
    with user_errors():
        check_rules(cfg, RULES)
        results = predict(cfg)
        width = max((len(r.name) for r in results if isinstance(r, Prediction)), default=0)
        failed = 0
        for r in results:
            if isinstance(r, Prediction):
                print(f"{r.name:<{width}}  {r.digit}  {r.probability:.3f}", flush=True)
            else:
                failed += 1
                print(f"{r[0]}: {r[1]}", file=sys.stderr, flush=True)
        if cfg.preview and failed < len(results):
            print(f"wrote {cfg.preview}", file=sys.stderr)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    sys.argv[1:] = quote_ckpt_list(sys.argv[1:])
    run_command(main, "predict")
