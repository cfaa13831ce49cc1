"""Models: ``build_model(ModelSpec, num_classes=, in_channels=, image_size=) -> nn.Module`` (bare
network, no normalisation; wrap it in :class:`Normalized`), ``head_of`` / ``replace_head``.

Registered in :data:`MODELS`: ``lenet``, ``lenet-unpadded``, ``lenet-cifar``, ``mlp``, ``resnet20``, ``resnet56``.
Any other name is looked up among torchvision's classification models (``resnet18``, ``vgg16``,
``alexnet``, ...; see :func:`torchvision_names`). ``model.weights: PATH`` starts any of them from a
state_dict file instead of their initialisation or torchvision's download (no network; a head made
for other classes is replaced; see :mod:`ssbench.models.weights`). Every built model is checked with
a dummy forward at the requested input shape, so an image size too small for the architecture is a one-line
:class:`~ssbench.errors.SpecError` at build time, not a shape error in the middle of training.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ssbench.errors import SpecError, SsbenchError, UnknownNameError
from ssbench.models.heads import head_of, replace_head
from ssbench.models.normalized import Normalized
from ssbench.models.resnet_cifar import CifarResNet, resnet20, resnet56
from ssbench.models.small import MLP, LeNet, LeNetCifar
from ssbench.models.tv import build_torchvision, no_inplace, torchvision_names
from ssbench.models.weights import load_weights, read_state_dict
from ssbench.registry import Registry
from ssbench.specs import ModelSpec

__all__ = [
    "MODELS", "build_model", "known_model", "Normalized", "head_of", "replace_head", "torchvision_names", "count_parameters",
    "LeNet", "LeNetCifar", "MLP", "CifarResNet", "no_inplace", "load_weights", "read_state_dict",
]

# name -> factory(spec, num_classes, in_channels, image_size) -> nn.Module
ModelFactory = Callable[[ModelSpec, int, int, int], nn.Module]
MODELS: Registry[ModelFactory] = Registry("model")


def _ours(spec: ModelSpec, what: str) -> None:
    if spec.pretrained:
        raise SpecError(f"{spec.name} has no pretrained weights ({what}); pretrain it with `ssbench pretrain` and fine-tune from that run")
    if spec.hidden is not None and spec.name != "mlp":
        raise SpecError(f"model.hidden is an mlp option, not one of {spec.name!r}")


@MODELS.register("lenet")
def _lenet(spec: ModelSpec, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """LeNet-5 of BioTorch's MNIST experiments (Sanfiz & Akrout 2021), 28x28 inputs."""
    _ours(spec, "ours")
    return LeNet(num_classes, in_channels, image_size)


@MODELS.register("lenet-unpadded")
def _lenet_unpadded(spec: ModelSpec, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """BioTorch's LeNetMNIST exactly (conv1 unpadded): its 32x32 experiments (Table 1)."""
    _ours(spec, "ours")
    return LeNet(num_classes, in_channels, image_size, padding=0)


@MODELS.register("lenet-cifar")
def _lenet_cifar(spec: ModelSpec, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """BioTorch's small CIFAR CNN (3 convs, global pooling, 2 fc)."""
    _ours(spec, "ours")
    return LeNetCifar(num_classes, in_channels, image_size)


@MODELS.register("mlp")
def _mlp(spec: ModelSpec, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """Fully connected ReLU network, hidden widths from model.hidden (default 256, 256)."""
    _ours(spec, "ours")
    hidden = (256, 256) if spec.hidden is None else tuple(spec.hidden)
    return MLP(in_channels * image_size * image_size, num_classes, hidden)


@MODELS.register("resnet20")
def _resnet20(spec: ModelSpec, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """He et al. 2016 CIFAR ResNet-20 (option-A shortcuts, 0.27M parameters)."""
    _ours(spec, "ours")
    return resnet20(num_classes, in_channels)


@MODELS.register("resnet56")
def _resnet56(spec: ModelSpec, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """He et al. 2016 CIFAR ResNet-56 (option-A shortcuts, 0.85M parameters)."""
    _ours(spec, "ours")
    return resnet56(num_classes, in_channels)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _runs(model: nn.Module, in_channels: int, size: int) -> bool:
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_channels, size, size))
        return True
    except (RuntimeError, ValueError, AssertionError, IndexError):
        return False


def _check_forward(model: nn.Module, name: str, num_classes: int, in_channels: int, image_size: int) -> None:
    """Dummy forward (eval mode, so BatchNorm accepts a batch of one); clear error if it fails."""
    was_training = model.training
    model.eval()
    try:
        try:
            with torch.no_grad():
                out = model(torch.zeros(1, in_channels, image_size, image_size))
        except (RuntimeError, ValueError, AssertionError, IndexError) as exc:
            # smallest size that works (binary search; only on this error path, so the cost is fine)
            lo, hi = image_size + 1, 512
            if not _runs(model, in_channels, hi):
                raise SpecError(
                    f"{name} cannot run on {image_size}x{image_size} inputs ({' '.join(str(exc).split())[:120]}); "
                    f"try data.image_size=224"
                ) from exc
            while lo < hi:
                mid = (lo + hi) // 2
                if _runs(model, in_channels, mid):
                    hi = mid
                else:
                    lo = mid + 1
            raise SpecError(
                f"{name} needs images of at least {lo}x{lo} pixels, got {image_size}x{image_size}; set data.image_size={lo} or more"
            ) from exc
    finally:
        model.train(was_training)
    if tuple(out.shape) != (1, num_classes):
        raise SsbenchError(f"{name} returns shape {tuple(out.shape)} instead of (N, {num_classes})")


def known_model(name: str) -> str:
    """The registry key of a model name (ours, or any torchvision classifier), else the one-line
    error listing the choices."""
    key = name.lower()
    if key in MODELS or key in torchvision_names():
        return key
    raise UnknownNameError("model", name, MODELS.names() + ["<any torchvision classifier, e.g. resnet18>"])


def build_model(spec: ModelSpec, *, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """The bare network for ``spec`` (no normalisation), checked by a dummy forward."""
    if num_classes < 1:
        raise SpecError(f"num_classes must be >= 1, got {num_classes}")
    if in_channels < 1:
        raise SpecError(f"in_channels must be >= 1, got {in_channels}")
    key = known_model(spec.name)
    if key in MODELS:
        model = MODELS.get(key)(spec, num_classes, in_channels, image_size)
        if spec.weights is not None:  # a plain state_dict of this very architecture (its shapes decide)
            load_weights(model, spec.weights, key, num_classes=num_classes)
    else:
        if spec.hidden is not None:
            raise SpecError(f"model.hidden is an mlp option, not one of {spec.name!r}")
        model = build_torchvision(
            key, num_classes=num_classes, in_channels=in_channels, image_size=image_size, pretrained=spec.pretrained,
            weights=spec.weights,
        )
    _check_forward(model, spec.name, num_classes, in_channels, image_size)
    return model
