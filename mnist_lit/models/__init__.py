"""Plain ``nn.Module`` backbones: one per seed report, VGGNet and SimpleCNN for accuracy; no Lightning."""

from mnist_lit.models.bnconvnet import BNConvNet
from mnist_lit.models.convnet import ConvNet
from mnist_lit.models.examplesnet import ExamplesNet
from mnist_lit.models.oneconv import OneConv
from mnist_lit.models.resnet import ResNet8
from mnist_lit.models.sepconv import SepConv
from mnist_lit.models.simplecnn import SimpleCNN
from mnist_lit.models.tutorialnet import TutorialNet
from mnist_lit.models.twoconv import TwoConv
from mnist_lit.models.vggnet import VGGNet

__all__ = [
    "BNConvNet",
    "ConvNet",
    "ExamplesNet",
    "OneConv",
    "ResNet8",
    "SepConv",
    "SimpleCNN",
    "TutorialNet",
    "TwoConv",
    "VGGNet",
]
