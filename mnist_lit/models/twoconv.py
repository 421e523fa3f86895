"""Report 000's two-conv net, with the activation as a choice (its ReLU vs LeakyReLU table)."""

from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "leakyrelu": nn.LeakyReLU}


class TwoConv(nn.Sequential):
    """Two conv/pool stages and a 320-128-32-10 head; 50,826 parameters."""

    def __init__(self, activation: str = "relu") -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        act = ACTIVATIONS[activation]
        super().__init__(
            nn.Conv2d(1, 10, kernel_size=5),
            nn.MaxPool2d(2),
            act(),
            nn.Conv2d(10, 20, kernel_size=5),
            nn.MaxPool2d(2),
            act(),
            nn.Flatten(),
            nn.Linear(320, 128),
            act(),
            nn.Linear(128, 32),
            act(),
            nn.Linear(32, 10),
        )
