"""CIFAR ResNets of He et al. 2016 ("Deep Residual Learning for Image Recognition", Sec. 4.2).

Depth 6n+2: a 3x3 conv with 16 filters, three stages of n basic blocks with 16/32/64 filters
(stride 2 at the start of stages 2 and 3), global average pooling, one fc layer.
ResNet-20: n=3, 0.27M parameters; ResNet-56: n=9, 0.85M (the paper's Table 6).

Shortcuts use **option A** (identity; when the shape changes, subsample by 2 and zero-pad the new
channels), as the paper does for CIFAR. Why: it reproduces the paper's parameter counts, it is what
the CIFAR feedback-alignment literature (BioTorch) trains, and a parameter-free shortcut has no
weights, so every learning rule sees exactly the same set of trainable layers (option B would add
1x1 projection convs that the rules would also have to handle).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class PadShortcut(nn.Module):
    """Option-A shortcut: spatial subsampling by ``stride`` and zero channels up to ``out_planes``."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        extra = out_planes - in_planes
        self.pad = (extra // 2, extra - extra // 2)

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, *self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module = (
            PadShortcut(in_planes, planes, stride) if stride != 1 or in_planes != planes else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))  # out of place: see ssbench.models.small


class CifarResNet(nn.Module):
    def __init__(self, n: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        stages, planes = [], 16
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = [BasicBlock(planes, width, stride)] + [BasicBlock(width, width) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            planes = width
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():  # He initialisation, as in the paper
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


def resnet20(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(3, num_classes, in_channels)


def resnet56(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(9, num_classes, in_channels)
