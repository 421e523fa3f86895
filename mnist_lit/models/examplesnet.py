"""The pytorch/examples MNIST net, the baseline most users compare against."""

from torch import nn


class ExamplesNet(nn.Sequential):
    """Conv(1->32), Conv(32->64), pool, dropout, 9216-128-10 head; 1,199,882 parameters."""

    def __init__(self) -> None:
        super().__init__(
            nn.Conv2d(1, 32, kernel_size=3),
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Dropout(0.25),
            nn.Flatten(),
            nn.Linear(9216, 128),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(128, 10),
        )
