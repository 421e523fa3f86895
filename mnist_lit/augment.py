"""Random affine augmentation of a whole batch at once, on whatever device the batch lives on.

torchvision's per-image ``RandomAffine`` in a DataLoader worker costs more than a small network's
step; one ``affine_grid`` + ``grid_sample`` over the batch costs a fraction of it, and runs on the GPU
when training does. Each image gets its own rotation, scale and shift, drawn from torch's RNG, so a
seeded run augments the same way every time. An elastic distortion (Simard, Steinkraus and Platt,
"Best Practices for Convolutional Neural Networks Applied to Visual Document Analysis", 2003: a
random displacement field smoothed by a Gaussian) can be added to the same sampling grid, so it
costs one blur and no second resampling. torchvision's ``ElasticTransform`` draws one field per
call, the same for the whole batch; here every image gets its own. Random erasing (Zhong et al.,
"Random Erasing Data Augmentation", 2017) blanks a rectangle of its own in each chosen image, where
torchvision's ``RandomErasing`` blanks one rectangle across a whole batch.
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
    elastic_alpha: float = 0.0,
    elastic_sigma: float = 4.0,
    elastic_p: float = 1.0,
) -> torch.Tensor:
    """Rotate by U(-degrees, degrees), scale by U(scale), shift by up to ``translate`` of the side,
    and with ``elastic_alpha`` > 0 distort elastically (Simard's alpha and sigma, in pixels: a
    U(-1, 1) field per pixel, Gaussian-blurred with ``elastic_sigma``, times ``elastic_alpha``),
    each image with probability ``elastic_p``, so one network sees digits both bent and not.

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
    if elastic_alpha > 0 and elastic_p > 0:
        displacement = elastic_displacement(images, elastic_alpha, elastic_sigma)
        if elastic_p < 1:  # drawn only then, so that p=1 augments exactly as before the key existed
            displacement = displacement * (torch.rand(n, 1, 1, 1, device=dev) < elastic_p).to(dtype)
        grid = grid + displacement
    shifted = images - fill  # grid_sample pads with zeros: pad with the background instead
    return F.grid_sample(shifted, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill


def elastic_displacement(images: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
    """A smooth random displacement per image, [N, H, W, 2] in ``grid_sample``'s [-1, 1] units.

    The blur is separable (a row pass, then a column pass): a 25x25 kernel as one 2-D convolution
    would cost more than the training step of a small net."""
    n, _, h, w = images.shape
    dev, dtype = images.device, images.dtype
    field = torch.rand(n * 2, 1, h, w, device=dev, dtype=dtype) * 2 - 1
    radius = min(math.ceil(3 * sigma), h - 1, w - 1)  # reflect padding needs fewer pixels than the side
    taps = torch.arange(-radius, radius + 1, device=dev, dtype=dtype)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    field = F.conv2d(F.pad(field, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    field = F.conv2d(F.pad(field, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    pixel = torch.tensor([2 / w, 2 / h], device=dev, dtype=dtype) * alpha  # pixels -> grid units
    return field.view(n, 2, h, w).permute(0, 2, 3, 1) * pixel


def random_erase(
    images: torch.Tensor,
    p: float,
    scale: tuple[float, float] = (0.02, 0.33),
    ratio: tuple[float, float] = (0.3, 3.3),
    fill: float = 0.0,
) -> torch.Tensor:
    """Set a random rectangle of each image to ``fill`` (the background: strokes go missing), with
    probability ``p`` per image. Its area is U(``scale``) of the image and its aspect ratio
    (height / width) log-uniform in ``ratio``, torchvision's ``RandomErasing`` defaults; a side
    that would exceed the image is cut to it."""
    n, _, h, w = images.shape
    dev = images.device
    area = torch.empty(n, device=dev).uniform_(scale[0], scale[1]) * (h * w)
    aspect = torch.empty(n, device=dev).uniform_(math.log(ratio[0]), math.log(ratio[1])).exp()
    eh = (area * aspect).sqrt().round().clamp(1, h)
    ew = (area / aspect).sqrt().round().clamp(1, w)
    top = (torch.rand(n, device=dev) * (h - eh + 1)).floor()
    left = (torch.rand(n, device=dev) * (w - ew + 1)).floor()
    chosen = torch.rand(n, device=dev) < p
    rows = torch.arange(h, device=dev).view(1, h, 1)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    inside = (
        (rows >= top.view(n, 1, 1))
        & (rows < (top + eh).view(n, 1, 1))
        & (cols >= left.view(n, 1, 1))
        & (cols < (left + ew).view(n, 1, 1))
        & chosen.view(n, 1, 1)
    )
    return images.masked_fill(inside.unsqueeze(1), fill)
