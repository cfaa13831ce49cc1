"""Small networks for MNIST-sized and CIFAR-sized inputs: LeNet (BioTorch), its CIFAR variant, MLP.

All activations are out-of-place ``nn.ReLU()`` modules: the rule engine swaps every Linear/Conv2d
for a subclass with a custom backward, and in-place ops on tensors it saved would break it.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from ssbench.errors import SpecError


def _conv_out(size: int, kernel: int, padding: int = 0, stride: int = 1) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class LeNet(nn.Module):
    """LeNet-5 as used for MNIST in BioTorch (Sanfiz & Akrout 2021, "Benchmarking the Accuracy and
    Robustness of Feedback Alignment Algorithms", arXiv:2108.13446, Table 5; code: jsalbert/biotorch,
    ``biotorch/models/le_net.py``, ``LeNetMNIST``).

    conv 5x5 -> 6, ReLU, max-pool 2 | conv 5x5 -> 16, ReLU, max-pool 2 | conv 5x5 -> 120, ReLU |
    fc 84, ReLU | fc num_classes.

    One deliberate difference in `lenet`: conv1 pads by 2 (as LeCun's LeNet-5, which expects 32x32).
    BioTorch's stored code has no padding, which leaves a 4x4 map for the 5x5 conv3 on 28x28 inputs
    and cannot run; with the padding a 28x28 image gives conv3 a 5x5 map and a 1x1x120 output, the
    120-unit layer of the paper. Other sizes flatten ``120 x s x s`` (32x32 inputs: s = 2, fc1 480
    inputs). `lenet-unpadded` (padding=0) is BioTorch's network exactly, for its 32x32 experiments
    (BioTorch Table 1 resizes Fashion-MNIST to 32x32: conv3 1x1, fc1 120 inputs).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28, padding: int = 2) -> None:
        super().__init__()
        s = _conv_out(image_size, 5, padding=padding) // 2
        s = _conv_out(s, 5) // 2
        s = _conv_out(s, 5)
        if s < 1:
            least = 28 + 2 * (2 - padding)  # conv3 needs a 5x5 map
            raise SpecError(f"{'lenet' if padding == 2 else 'lenet-unpadded'} needs images of at least "
                            f"{least}x{least} pixels, got {image_size}x{image_size}; set data.image_size")
        self.conv1 = nn.Conv2d(in_channels, 6, kernel_size=5, padding=padding)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(16, 120, kernel_size=5)
        self.relu3 = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(120 * s * s, 84)
        self.relu4 = nn.ReLU()
        self.fc2 = nn.Linear(84, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.flatten(self.relu3(self.conv3(x)))
        return self.fc2(self.relu4(self.fc1(x)))


class LeNetCifar(nn.Module):
    """BioTorch's CIFAR-10 LeNet variant (``LeNetCIFAR`` in jsalbert/biotorch ``biotorch/models/le_net.py``).

    conv 3x3 -> 32, ReLU, max-pool 2 | conv 3x3 -> 64, ReLU, max-pool 2 | conv 3x3 -> 128, ReLU |
    global average pool | fc 256, ReLU | fc num_classes. The global pool makes it size-agnostic
    (>= 18 px).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> None:
        super().__init__()
        s = _conv_out(_conv_out(_conv_out(image_size, 3) // 2, 3) // 2, 3)
        if s < 1:
            raise SpecError(f"lenet-cifar needs images of at least 18x18 pixels, got {image_size}x{image_size}; set data.image_size")
        self.conv1 = nn.Conv2d(in_channels, 32, kernel_size=3)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(64, 128, kernel_size=3)
        self.relu3 = nn.ReLU()
        self.pool3 = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(128, 256)
        self.relu4 = nn.ReLU()
        self.fc2 = nn.Linear(256, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.flatten(self.pool3(self.relu3(self.conv3(x))))
        return self.fc2(self.relu4(self.fc1(x)))


class MLP(nn.Module):
    """Flatten -> [Linear -> ReLU] per hidden width -> Linear head (``fc``). For DFA / depth studies.

    ``hidden=()`` is multinomial logistic regression.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: tuple[int, ...] = (256, 256)) -> None:
        super().__init__()
        if any(h < 1 for h in hidden):
            raise SpecError(f"model.hidden widths must be >= 1, got {list(hidden)}")
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        width = in_features
        for i, h in enumerate(hidden, start=1):
            layers[f"fc{i}"] = nn.Linear(width, h)
            layers[f"relu{i}"] = nn.ReLU()
            width = h
        self.flatten = nn.Flatten()
        self.body = nn.Sequential(layers)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.body(self.flatten(x)))
