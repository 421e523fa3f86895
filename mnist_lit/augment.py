"""Random affine augmentation of a whole batch at once, on whatever device the batch lives on.

torchvision's per-image ``RandomAffine`` in a DataLoader worker costs more than a small network's
step; one ``affine_grid`` + ``grid_sample`` over the batch costs a fraction of it, and runs on the GPU
when training does. Each image gets its own rotation, scale and shift, drawn from torch's RNG, so a
seeded run augments the same way every time.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def random_affine(
    images: torch.Tensor,
    degrees: float = 10.0,
    translate: float = 0.1,
    scale: tuple[float, float] = (0.9, 1.1),
    fill: float = 0.0,
) -> torch.Tensor:
    """Rotate by U(-degrees, degrees), scale by U(scale), shift by up to ``translate`` of the side.

    ``images`` is float [N, C, H, W]; pixels that come from outside the image get ``fill`` (the
    normalised background value, so the padding matches MNIST's black border).
    """
    n = images.shape[0]
    dev, dtype = images.device, images.dtype
    angle = (torch.rand(n, device=dev, dtype=dtype) * 2 - 1) * math.radians(degrees)
    factor = torch.empty(n, device=dev, dtype=dtype).uniform_(scale[0], scale[1])
    shift = (torch.rand(n, 2, device=dev, dtype=dtype) * 2 - 1) * (2 * translate)  # grid spans [-1, 1]
    cos, sin = torch.cos(angle) / factor, torch.sin(angle) / factor
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], dim=1), torch.stack([sin, cos, shift[:, 1]], dim=1)], dim=1
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    shifted = images - fill  # grid_sample pads with zeros: pad with the background instead
    return F.grid_sample(shifted, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill
