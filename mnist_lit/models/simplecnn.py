"""The "simple CNN" family of An et al.: unpadded k x k conv-BN-ReLU layers, no pooling at all.

Sanghyeon An, Minjun Lee, Sanglee Park, Heerin Yang and Jungmin So, "An Ensemble of Simple
Convolutional Neural Network Models for MNIST Digit Recognition" (2020): every conv shrinks the
digit by ``kernel - 1`` pixels, so the kernel size alone sets how many layers fit a 28x28 image
(M3: ten 3x3 layers down to 8x8, M5: five 5x5 down to 8x8, M7: four 7x7 down to 4x4). The head is
one bias-free linear layer over the flattened last layer with a batch norm on the ten logits.
Without ``widths`` the paper's channel counts are used; narrower ones trade accuracy for CPU time.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from mnist_lit.models.vggnet import conv_bn_relu

# channels per conv layer of the paper's M3, M5 and M7
PAPER_WIDTHS: dict[int, tuple[int, ...]] = {
    3: (32, 48, 64, 80, 96, 112, 128, 144, 160, 176),
    5: (32, 64, 96, 128, 160),
    7: (48, 96, 144, 192),
}


class SimpleCNN(nn.Sequential):
    """One unpadded ``kernel`` x ``kernel`` conv-BN-ReLU per entry of ``widths`` (the paper's M3, M5
    or M7 when left out), then dropout, a bias-free linear layer and BatchNorm1d over the logits.
    The defaults (M5) have 1,128,180 parameters."""

    def __init__(self, kernel: int = 5, widths: Sequence[int] | None = None, dropout: float = 0.0) -> None:
        kernel = int(kernel)
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel must be an odd size >= 1, got {kernel}")
        if widths is None:
            if kernel not in PAPER_WIDTHS:
                raise ValueError(f"kernel={kernel} has no paper widths (3, 5 or 7 do): give widths as well")
            widths = PAPER_WIDTHS[kernel]
        if not widths or any(int(w) < 1 for w in widths):
            raise ValueError(f"widths must be a non-empty list of channel counts >= 1, got {list(widths)}")
        side = 28 - len(widths) * (kernel - 1)
        if side < 1:
            raise ValueError(
                f"widths: {len(widths)} unpadded {kernel}x{kernel} convs shrink a 28x28 digit to nothing; "
                f"at most {27 // (kernel - 1)} fit"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = []
        in_ch = 1
        for width in (int(w) for w in widths):
            layers += conv_bn_relu(in_ch, width, kernel, padding=0)
            in_ch = width
        head = nn.Linear(in_ch * side * side, 10, bias=False)
        layers += [nn.Flatten(), nn.Dropout(dropout), head, nn.BatchNorm1d(10)]
        super().__init__(*layers)
