"""Report 004's batch-normalised ConvNet with its large 6272-784-98-10 head."""

from torch import nn


class BNConvNet(nn.Sequential):
    """Two conv+BN+ReLU+pool stages (64, 128 channels) and an MLP head; 5,070,832 params.

    The report applied softmax before its cross-entropy loss; this net returns logits.
    """

    def __init__(self) -> None:
        super().__init__(
            nn.Conv2d(1, 64, kernel_size=3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 128, kernel_size=3, padding=1),
            nn.BatchNorm2d(128),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(6272, 784),
            nn.ReLU(),
            nn.Linear(784, 98),
            nn.ReLU(),
            nn.Linear(98, 10),
        )
