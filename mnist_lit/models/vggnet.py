"""A VGG-style stack for accuracy: stages of 3x3 conv-BN-ReLU, 2x2 max pooling between them.

The design of Simonyan and Zisserman's VGG nets ("Very Deep Convolutional Networks for
Large-Scale Image Recognition", 2014) with Ioffe and Szegedy's batch norm after every conv, sized
for 28x28 digits: the strong Kaggle MNIST nets (Chris Deotte's architecture study, 2018) and the
"simple CNN" ensembles of An et al. (2020) are stacks of this kind. Widths, convs per stage and
the head are arguments, so the experiment presets can trade accuracy against CPU time.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int = 3, padding: int = 1) -> list[nn.Module]:
    """A conv without bias (the batch norm after it has one), BN, ReLU; by default 3x3 'same'."""
    return [
        nn.Conv2d(in_ch, out_ch, kernel, padding=padding, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    ]


class VGGNet(nn.Sequential):
    """``depth`` conv-BN-ReLU per stage (one count for every stage, or a list of one per stage)
    at each of ``widths`` channels (28, 14, 7 px for three stages), then dropout and a linear
    layer over the flattened last stage (``head="flatten"``) or over its global average
    (``head="pool"``). The defaults have 349,610 parameters."""

    def __init__(
        self,
        widths: Sequence[int] = (32, 64, 128),
        depth: int | Sequence[int] = 2,
        head: str = "flatten",
        dropout: float = 0.25,
    ) -> None:
        if not widths or any(int(w) < 1 for w in widths):
            raise ValueError(f"widths must be a non-empty list of channel counts >= 1, got {list(widths)}")
        if not 1 <= len(widths) <= 3:
            raise ValueError(f"widths: 1 to 3 stages fit a 28x28 digit, got {len(widths)}")
        depths = [int(d) for d in depth] if isinstance(depth, Sequence) else [int(depth)] * len(widths)
        if len(depths) != len(widths) or any(d < 1 for d in depths):
            raise ValueError(
                f"depth must be a count >= 1 of convs per stage, or a list of one per stage "
                f"({len(widths)} here), got {depth if isinstance(depth, int) else list(depth)}"
            )
        if head not in ("flatten", "pool"):
            raise ValueError(f"head must be 'flatten' or 'pool', got {head!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = []
        in_ch = 1
        for stage, (width, convs) in enumerate(zip((int(w) for w in widths), depths, strict=True)):
            if stage:
                layers.append(nn.MaxPool2d(2))
            for _ in range(convs):
                layers += conv_bn_relu(in_ch, width)
                in_ch = width
        side = 28 // 2 ** (len(widths) - 1)
        if head == "pool":
            layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(in_ch, 10)]
        else:
            layers += [nn.Flatten(), nn.Dropout(dropout), nn.Linear(in_ch * side * side, 10)]
        super().__init__(*layers)
