"""MNIST's pixel statistics and the one way every part of the package turns stored digits into
a network's input (training, evaluate, predict, export, the inspection views)."""

from __future__ import annotations

import torch

# mean and standard deviation of the 60,000 training images' pixels, scaled to [0, 1]
MEAN, STD = 0.1307, 0.3081


def normalize(images: torch.Tensor, mean: float = MEAN, std: float = STD) -> torch.Tensor:
    """uint8 [N,28,28] -> float [N,1,28,28], scaled to [0,1] and standardised."""
    return ((images.float() / 255.0 - mean) / std).unsqueeze(1)
