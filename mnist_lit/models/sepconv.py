"""Report 003's net with a depthwise-separable block; few parameters for its accuracy."""

from torch import nn


class SepConv(nn.Sequential):
    """Conv, conv+BN, pool, depthwise 3x3 + pointwise 1x1 down to 8 channels; 30,306 params."""

    def __init__(self, dropout: float = 0.2) -> None:
        super().__init__(
            nn.Conv2d(1, 32, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=3),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 64, kernel_size=3, groups=64),
            nn.Conv2d(64, 8, kernel_size=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(968, 10),
        )
