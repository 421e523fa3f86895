"""Report 000's smallest net: one conv layer straight into a linear classifier."""

from torch import nn


class OneConv(nn.Sequential):
    """Conv(1->10, k5) -> MaxPool(4) -> ReLU -> Linear(360, 10); 3,870 parameters."""

    def __init__(self) -> None:
        super().__init__(
            nn.Conv2d(1, 10, kernel_size=5),
            nn.MaxPool2d(4),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(360, 10),
        )
