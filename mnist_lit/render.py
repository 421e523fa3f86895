"""Pictures of digits: titled digit grids and feature maps (charts are matplotlib's: figures.py).

Drawn with torchvision.utils.make_grid and Pillow (which torchvision brings): a grid of many
small images is a picture, not a chart. Every function returns a uint8 tensor [3, H, W], the
layout TensorBoard's ``add_image`` takes and ``save_png`` writes.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont
from torch.nn import functional as F
from torchvision.utils import make_grid

WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
GAP = (70, 130, 180)


@cache
def font(size: int = 12) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font at ``size`` px (a fixed bitmap font where FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):
        return ImageFont.load_default()


def to_tensor(img: Image.Image) -> torch.Tensor:
    return (
        torch.frombuffer(bytearray(img.convert("RGB").tobytes()), dtype=torch.uint8)
        .view(img.height, img.width, 3)
        .permute(2, 0, 1)
        .contiguous()
    )


def to_pil(img: torch.Tensor) -> Image.Image:
    return Image.fromarray(img.permute(1, 2, 0).contiguous().numpy())


def save_png(img: torch.Tensor, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(img).save(path)
    return path


def png(img: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    to_pil(img).save(buf, format="PNG")
    return buf.getvalue()


def rescale(x: torch.Tensor) -> torch.Tensor:
    """Each [.., H, W] map to [0, 1] on its own (a flat map becomes mid-grey, not noise)."""
    x = x.detach().float()
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (x - lo) / span.clamp_min(1e-12), torch.full_like(x, 0.5))


def upscale(x: torch.Tensor, size: int) -> torch.Tensor:
    """[N, H, W] -> [N, size', size'] by whole-pixel nearest scaling, so pixels stay crisp squares."""
    factor = max(1, size // max(x.shape[-2:]))
    return F.interpolate(x.unsqueeze(1), scale_factor=factor, mode="nearest").squeeze(1)


def titled_grid(
    images: torch.Tensor, titles: Sequence[str], ncol: int = 10, cell: int = 56, caption: int = 14
) -> torch.Tensor:
    """Grey images [N, H, W] in [0, 1] (or uint8), each with a short title under it."""
    if images.dtype == torch.uint8:
        images = images.float() / 255.0
    tiles = upscale(images.float().clamp(0, 1), cell)
    n, h, w = tiles.shape
    ncol = max(1, min(ncol, n))
    nrow = (n + ncol - 1) // ncol
    pad, tile_w, tile_h = 4, w + 4, h + caption + 4
    tile_w = max(tile_w, caption * 4)
    canvas = Image.new("RGB", (ncol * tile_w + pad, nrow * tile_h + pad), WHITE)
    draw = ImageDraw.Draw(canvas)
    pixels = (tiles * 255).round().to(torch.uint8).numpy()
    for i in range(n):
        r, c = divmod(i, ncol)
        x0, y0 = pad + c * tile_w, pad + r * tile_h
        canvas.paste(Image.fromarray(pixels[i], mode="L").convert("RGB"), (x0, y0))
        draw.text((x0, y0 + h + 1), titles[i], fill=BLACK, font=font(caption - 3))
    return to_tensor(canvas)


def headed(img: torch.Tensor, text: str, size: int = 14) -> torch.Tensor:
    """``img`` with a one-line heading above it."""
    body = to_pil(img)
    canvas = Image.new("RGB", (max(body.width, len(text) * size // 2 + 8), body.height + size + 6), WHITE)
    canvas.paste(body, (0, size + 6))
    ImageDraw.Draw(canvas).text((4, 2), text, fill=BLACK, font=font(size))
    return to_tensor(canvas)


def map_grid(maps: torch.Tensor, ncol: int, cell: int = 56) -> torch.Tensor:
    """[N, H, W] activations or filters -> a grid ``ncol`` wide, each map rescaled on its own.

    The gaps between maps are coloured, so white and black maps still show their edges.
    """
    tiles = F.interpolate(rescale(maps).unsqueeze(1), size=(cell, cell), mode="nearest")
    grid = make_grid(tiles, nrow=ncol, padding=3, pad_value=-1.0)
    gap = (grid < 0).all(dim=0)
    grid = (grid.clamp(0, 1) * 255).round().to(torch.uint8)
    grid[:, gap] = torch.tensor(GAP, dtype=torch.uint8).view(3, 1)
    return grid


def misclassified_grid(
    pixels: torch.Tensor, predictions: torch.Tensor, total: int, cell: int = 56, caption: int = 16
) -> torch.Tensor:
    """Misclassified digits (pixels [N, H, W] 0..255; predictions [N, 3]: predicted, true,
    confidence), each titled ``predicted/true confidence``, under a heading that counts them."""
    titles = [f"{int(p)}/{int(t)}  {float(c):.0%}" for p, t, c in predictions.tolist()]
    grid = titled_grid(pixels.to(torch.uint8), titles, ncol=10, cell=cell, caption=caption)
    shown = f", the {len(titles)} most confident shown" if len(titles) < total else ", most confident first"
    return headed(
        grid, f"{total} misclassified test digits{shown}: predicted/true confidence", size=caption - 2
    )
