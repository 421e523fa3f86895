"""The widely published PyTorch MNIST tutorial net used by report 001, returning logits."""

from torch import nn


class TutorialNet(nn.Sequential):
    """Two conv stages with Dropout2d, a 320-50-10 head with dropout; 21,840 parameters."""

    def __init__(self, dropout: float = 0.5) -> None:
        super().__init__(
            nn.Conv2d(1, 10, kernel_size=5),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(10, 20, kernel_size=5),
            nn.Dropout2d(dropout),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(320, 50),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(50, 10),
        )
