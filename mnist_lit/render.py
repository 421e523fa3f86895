"""Pictures for people: titled digit grids, feature maps, confusion matrices and line charts.

Drawn with torchvision.utils.make_grid and Pillow (which torchvision brings), so inspection
needs no plotting library. Every function returns a uint8 tensor [3, H, W], the layout
TensorBoard's ``add_image`` takes and ``save_png`` writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont
from torch.nn import functional as F
from torchvision.utils import make_grid

WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
GREY = (150, 150, 150)
GAP = (70, 130, 180)
COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


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


def _shade(frac: float) -> tuple[int, int, int]:
    """White (0) to dark blue (1)."""
    return tuple(round(w + (d - w) * frac) for w, d in zip(WHITE, (8, 48, 107), strict=True))  # type: ignore[return-value]


def confusion_image(cm: torch.Tensor, title: str = "", cell: int = 40) -> torch.Tensor:
    """A confusion matrix (rows true, columns predicted) with counts, shaded by row share."""
    cm = cm.detach().cpu().long()
    k = cm.shape[0]
    left, top = 46, 46 + (18 if title else 0)
    canvas = Image.new("RGB", (left + k * cell + 8, top + k * cell + 8), WHITE)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((4, 2), title, fill=BLACK, font=font(14))
    draw.text((left, top - 40), "predicted", fill=BLACK, font=font(12))
    draw.text((2, top - 20), "true", fill=BLACK, font=font(12))
    rows = cm.sum(dim=1).clamp_min(1)
    for i in range(k):
        draw.text((left + i * cell + cell // 2 - 4, top - 20), str(i), fill=BLACK, font=font(12))
        draw.text((24, top + i * cell + cell // 2 - 7), str(i), fill=BLACK, font=font(12))
        for j in range(k):
            frac = float(cm[i, j]) / float(rows[i])
            x0, y0 = left + j * cell, top + i * cell
            draw.rectangle((x0, y0, x0 + cell - 1, y0 + cell - 1), fill=_shade(frac), outline=GREY)
            if cm[i, j]:
                text = str(int(cm[i, j]))
                tw = draw.textlength(text, font=font(11))
                colour = WHITE if frac > 0.5 else BLACK
                draw.text((x0 + (cell - tw) / 2, y0 + cell / 2 - 7), text, fill=colour, font=font(11))
    return to_tensor(canvas)


def line_chart(
    series: dict[str, Sequence[tuple[float, float]]],
    title: str,
    xlabel: str,
    ylabel: str,
    size: tuple[int, int] = (560, 360),
    y_range: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Lines with markers, axes, ticks and a legend: enough to read a sweep at a glance."""
    width, height = size
    left, right, top, bottom = 64, 130, 34, 46
    canvas = Image.new("RGB", size, WHITE)
    draw = ImageDraw.Draw(canvas)
    xs = [x for pts in series.values() for x, _ in pts]
    ys = [y for pts in series.values() for _, y in pts]
    x_lo, x_hi = min(xs), max(xs)
    y_lo, y_hi = y_range or (min(ys), max(ys))
    if x_hi == x_lo:
        x_hi = x_lo + 1
    if y_hi == y_lo:
        y_lo, y_hi = y_lo - 0.01, y_hi + 0.01
    pw, ph = width - left - right, height - top - bottom

    def at(x: float, y: float) -> tuple[float, float]:
        return left + (x - x_lo) / (x_hi - x_lo) * pw, top + (1 - (y - y_lo) / (y_hi - y_lo)) * ph

    draw.text((left, 8), title, fill=BLACK, font=font(14))
    draw.rectangle((left, top, left + pw, top + ph), outline=BLACK)
    for i in range(6):
        y = y_lo + (y_hi - y_lo) * i / 5
        _, py = at(x_lo, y)
        draw.line((left, py, left + pw, py), fill=(225, 225, 225))
        draw.text((6, py - 7), f"{y:.3f}", fill=BLACK, font=font(11))
    for x in sorted(set(xs)):
        px, _ = at(x, y_lo)
        draw.line((px, top + ph, px, top + ph + 4), fill=BLACK)
        label = f"{x:g}"
        draw.text(
            (px - draw.textlength(label, font=font(11)) / 2, top + ph + 6), label, fill=BLACK, font=font(11)
        )
    draw.text((left + pw / 2 - 30, height - 20), xlabel, fill=BLACK, font=font(12))
    draw.text((6, top - 18), ylabel, fill=BLACK, font=font(12))
    for n, (label, pts) in enumerate(series.items()):
        colour = COLOURS[n % len(COLOURS)]
        points = [at(x, y) for x, y in sorted(pts)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for px, py in points:
            draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=colour)
        ly = top + 6 + n * 18
        draw.line((left + pw + 10, ly + 7, left + pw + 30, ly + 7), fill=colour, width=3)
        draw.text((left + pw + 36, ly), label, fill=BLACK, font=font(12))
    return to_tensor(canvas)
