"""Report 002's small ConvNet (4 and 8 channels, a wide 512-unit head)."""

from torch import nn


class ConvNet(nn.Sequential):
    """Conv(1->4) and Conv(4->8), both k5 'same', each pooled; 392-512-10 head; 207,258 params."""

    def __init__(self, dropout: float = 0.5) -> None:
        super().__init__(
            nn.Conv2d(1, 4, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 8, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(392, 512),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(512, 10),
        )
