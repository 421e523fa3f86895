"""Every seed architecture: the exact parameter count from the reports, logits of shape (N, 10)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mnist_lit import models

# parameter counts listed in the seed reports (input 1x28x28, 10 classes)
SEED_PARAMS = {
    "OneConv": 3_870,
    "TwoConv": 50_826,
    "ResNet8": 98_346,
    "TutorialNet": 21_840,
    "ConvNet": 207_258,
    "SepConv": 30_306,
    "BNConvNet": 5_070_832,
    "ExamplesNet": 1_199_882,
}


@pytest.mark.parametrize("name", sorted(SEED_PARAMS))
def test_parameter_count_and_logits(name: str) -> None:
    net = getattr(models, name)()
    assert sum(p.numel() for p in net.parameters()) == SEED_PARAMS[name]
    net.eval()
    with torch.no_grad():
        out = net(torch.randn(3, 1, 28, 28))
    assert out.shape == (3, 10)
    # logits, not probabilities: rows neither sum to one nor are all non-positive log-probs
    assert not torch.allclose(out.softmax(1).sum(1), out.sum(1))
    assert not torch.allclose(out.exp().sum(1), torch.ones(3), atol=1e-3)


@pytest.mark.parametrize("activation, kind", [("relu", nn.ReLU), ("leakyrelu", nn.LeakyReLU)])
def test_twoconv_activation_is_configurable(activation: str, kind: type[nn.Module]) -> None:
    net = models.TwoConv(activation=activation)
    acts = [m for m in net.modules() if isinstance(m, (nn.ReLU, nn.LeakyReLU))]
    assert acts and all(isinstance(m, kind) for m in acts)
    assert sum(p.numel() for p in net.parameters()) == SEED_PARAMS["TwoConv"]


def test_models_train_without_lightning() -> None:
    """Plain nn.Modules: one optimizer step with nothing but torch lowers the loss on a fixed batch."""
    torch.manual_seed(0)
    net = models.OneConv()
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    before = [p.detach().clone() for p in net.parameters()]
    loss = nn.functional.cross_entropy(net(x), y)
    loss.backward()
    opt.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, net.parameters(), strict=True))
    assert nn.functional.cross_entropy(net(x), y) < loss.detach() - 1e-3  # one step, clearly lower


@pytest.mark.parametrize(
    ("kwargs", "params"),
    [
        ({}, 349_610),  # conf/model/vggnet.yaml: 32, 64, 128 channels, two convs each
        ({"widths": [24, 48, 96]}, 208_642),  # experiment=best
        ({"widths": [16, 32, 64]}, 103_386),
        ({"widths": [16, 32, 64], "depth": 3, "head": "pool"}, 121_274),
        ({"widths": [16, 64, 128], "depth": [1, 2, 2]}, 330_938),  # one conv at 28 px, two at 14 and 7
    ],
)
def test_vggnet_sizes_itself_from_its_arguments(kwargs: dict, params: int) -> None:
    net = models.VGGNet(**kwargs).eval()
    assert sum(p.numel() for p in net.parameters()) == params
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    depth = kwargs.get("depth", 2)
    assert len(convs) == (sum(depth) if isinstance(depth, list) else 3 * depth)
    assert all(m.kernel_size == (3, 3) and m.bias is None for m in convs)  # the batch norm has the bias
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == len(convs)
    with torch.no_grad():
        assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"widths": []}, "widths"),
        ({"widths": [8, 8, 8, 8]}, "1 to 3 stages"),
        ({"depth": 0}, "depth"),
        ({"depth": [2, 2]}, "one per stage"),
        ({"depth": [2, 0, 2]}, "depth"),
        ({"head": "avg"}, "head"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_vggnet_refuses_shapes_it_cannot_build(kwargs: dict, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        models.VGGNet(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "convs", "side", "params"),
    [
        ({"kernel": 3}, 10, 8, 1_124_180),  # An et al.'s M3
        ({}, 5, 8, 1_128_180),  # conf/model/simplecnn.yaml: M5
        ({"kernel": 7}, 4, 4, 2_291_972),  # M7
        ({"kernel": 7, "widths": [16, 32, 48, 64]}, 4, 4, 262_244),  # M7 at a third of the channels
    ],
)
def test_simplecnn_is_the_papers_family_by_kernel(kwargs: dict, convs: int, side: int, params: int) -> None:
    net = models.SimpleCNN(**kwargs).eval()
    assert sum(p.numel() for p in net.parameters()) == params
    layers = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    kernel = kwargs.get("kernel", 5)
    assert len(layers) == convs
    assert all(m.kernel_size == (kernel, kernel) and m.padding == (0, 0) and m.bias is None for m in layers)
    assert not any(isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)) for m in net.modules())
    linear = next(m for m in net.modules() if isinstance(m, nn.Linear))
    assert linear.in_features == layers[-1].out_channels * side * side and linear.bias is None
    assert isinstance(net[-1], nn.BatchNorm1d) and net[-1].num_features == 10  # a batch norm on the logits
    with torch.no_grad():
        assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"kernel": 4}, "odd"),
        ({"kernel": 9}, "no paper widths"),
        ({"widths": []}, "widths"),
        ({"widths": [8] * 7}, "at most 6 fit"),
        ({"kernel": 3, "widths": [8] * 14}, "at most 13 fit"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_simplecnn_refuses_shapes_it_cannot_build(kwargs: dict, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        models.SimpleCNN(**kwargs)
