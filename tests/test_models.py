from __future__ import annotations

import urllib.error

import pytest
import torch
from torch import nn

from ssbench.errors import SpecError, SsbenchError
from ssbench.models import MODELS, Normalized, build_model, count_parameters, head_of, replace_head
from ssbench.specs import ModelSpec

SHAPES = [(1, 28), (3, 32), (1, 8)]
MIN_SIZE = {"lenet": 28, "lenet-unpadded": 32, "lenet-cifar": 18}


@pytest.mark.parametrize("name", ["lenet", "lenet-unpadded", "lenet-cifar", "mlp", "resnet20", "resnet56"])
@pytest.mark.parametrize("channels,size", SHAPES)
def test_small_models_output_shape(name: str, channels: int, size: int) -> None:
    assert name in MODELS
    spec = ModelSpec(name=name)
    if size < MIN_SIZE.get(name, 0):
        with pytest.raises(SpecError, match="at least"):
            build_model(spec, num_classes=7, in_channels=channels, image_size=size)
        return
    torch.manual_seed(0)
    model = build_model(spec, num_classes=7, in_channels=channels, image_size=size)
    out = model(torch.rand(3, channels, size, size))
    assert out.shape == (3, 7)
    out.sum().backward()  # every parameter is used by the forward
    assert all(p.grad is not None for p in model.parameters())


def _no_inplace(model: nn.Module) -> bool:
    return not any(getattr(m, "inplace", False) for m in model.modules())


def _cifar_resnet_params(n: int, classes: int = 10, c_in: int = 3) -> int:
    """Closed form: 3x3 convs without bias, BN (2 per channel), option-A shortcuts (no params), fc."""
    total = 9 * c_in * 16 + 2 * 16
    widths = [16, 32, 64]
    prev = 16
    for w in widths:
        for b in range(n):
            cin = prev if b == 0 else w
            total += 9 * cin * w + 2 * w + 9 * w * w + 2 * w
        prev = w
    return total + 64 * classes + classes


def test_resnet_parameter_counts_match_paper() -> None:
    r20 = build_model(ModelSpec(name="resnet20"), num_classes=10, in_channels=3, image_size=32)
    r56 = build_model(ModelSpec(name="resnet56"), num_classes=10, in_channels=3, image_size=32)
    assert count_parameters(r20) == _cifar_resnet_params(3)
    assert count_parameters(r56) == _cifar_resnet_params(9)
    # He et al. 2016, Table 6: 0.27M and 0.85M
    assert round(count_parameters(r20) / 1e6, 2) == 0.27
    assert round(count_parameters(r56) / 1e6, 2) == 0.85
    # 6n+2 weighted layers: 19 convs + 1 fc for ResNet-20
    convs = [m for m in r20.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19 and _no_inplace(r20)


def test_lenet_architecture() -> None:
    m = build_model(ModelSpec(name="lenet"), num_classes=10, in_channels=1, image_size=28)
    assert [c.out_channels for c in m.modules() if isinstance(c, nn.Conv2d)] == [6, 16, 120]
    assert [(l.in_features, l.out_features) for l in m.modules() if isinstance(l, nn.Linear)] == [(120, 84), (84, 10)]
    assert _no_inplace(m)


def test_lenet_unpadded_is_biotorchs_network_at_32px() -> None:
    """BioTorch's LeNetMNIST on 32x32: 28 -> 14 -> 10 -> 5 -> conv3 1x1x120 -> fc 120 -> 84 -> 10."""
    m = build_model(ModelSpec(name="lenet-unpadded"), num_classes=10, in_channels=1, image_size=32)
    convs = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
    assert [c.padding for c in convs] == [(0, 0)] * 3
    assert [(l.in_features, l.out_features) for l in m.modules() if isinstance(l, nn.Linear)] == [(120, 84), (84, 10)]
    padded = build_model(ModelSpec(name="lenet"), num_classes=10, in_channels=1, image_size=32)
    assert [l.in_features for l in padded.modules() if isinstance(l, nn.Linear)] == [480, 84]


def test_mlp_hidden_and_forward_matches_manual() -> None:
    torch.manual_seed(0)
    m = build_model(ModelSpec(name="mlp", hidden=(5, 4)), num_classes=3, in_channels=1, image_size=8)
    lin = [l for l in m.modules() if isinstance(l, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in lin] == [(64, 5), (5, 4), (4, 3)]
    x = torch.rand(2, 1, 8, 8)
    h = x.view(2, -1)
    for l in lin[:-1]:
        h = torch.clamp(h @ l.weight.T + l.bias, min=0)
    torch.testing.assert_close(m(x), h @ lin[-1].weight.T + lin[-1].bias)
    with pytest.raises(SpecError):
        build_model(ModelSpec(name="lenet", hidden=(3,)), num_classes=3, in_channels=1, image_size=28)


def test_normalized_equals_manual() -> None:
    torch.manual_seed(0)
    net = build_model(ModelSpec(name="lenet-cifar"), num_classes=4, in_channels=3, image_size=32)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    model = Normalized(net, mean, std)
    assert model.net is net
    x = torch.rand(2, 3, 32, 32)
    manual = torch.stack([(x[:, c] - mean[c]) / std[c] for c in range(3)], dim=1)
    torch.testing.assert_close(model(x), net(manual))
    assert {"mean", "std"} <= set(model.state_dict())


@pytest.mark.parametrize(
    "name,channels,size,expected",
    [
        ("lenet", 1, 28, "fc2"),
        ("resnet20", 3, 32, "fc"),
        ("resnet18", 1, 28, "fc"),
        ("vgg11", 3, 32, "classifier.6"),
        ("alexnet", 3, 64, "classifier.6"),
    ],
)
def test_head_of_and_replace_head(name: str, channels: int, size: int, expected: str) -> None:
    net = build_model(ModelSpec(name=name), num_classes=5, in_channels=channels, image_size=size)
    assert _no_inplace(net)
    model = Normalized(net, [0.5] * channels, [0.25] * channels)
    head_name, head = head_of(model)
    assert head_name == "net." + expected and head is model.get_submodule(head_name)
    assert isinstance(head, nn.Linear) and head.out_features == 5
    # it really is the last layer: the output equals head(features fed into it)
    feats = {}
    head.register_forward_hook(lambda m, i, o: feats.update(i=i[0], o=o))
    model.eval()
    x = torch.rand(2, channels, size, size)
    out = model(x)
    torch.testing.assert_close(out, feats["o"])
    old_weight = head.weight.detach().clone()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith(head_name)}
    replace_head(model, 3)
    new_name, new = head_of(model)
    assert new_name == head_name and new is not head and new.out_features == 3 and new.in_features == head.in_features
    assert model(x).shape == (2, 3)
    after = {n: p for n, p in model.named_parameters() if not n.startswith(head_name)}
    assert before.keys() == after.keys() and all(torch.equal(before[n], after[n]) for n in before)
    assert not torch.equal(old_weight[:3], new.weight.detach())


def test_torchvision_first_conv_and_small_images() -> None:
    m = build_model(ModelSpec(name="resnet18"), num_classes=4, in_channels=1, image_size=28)
    assert m.conv1.in_channels == 1 and m(torch.rand(2, 1, 28, 28)).shape == (2, 4)
    with pytest.raises(SpecError, match="63"):
        build_model(ModelSpec(name="alexnet"), num_classes=10, in_channels=3, image_size=32)


def test_pretrained_without_network_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", offline)
    with pytest.raises(SsbenchError) as info:
        build_model(ModelSpec(name="resnet18", pretrained=True), num_classes=10, in_channels=3, image_size=32)
    assert "\n" not in str(info.value) and "pretrained" in str(info.value)
    with pytest.raises(SsbenchError, match="channels=3"):
        build_model(ModelSpec(name="resnet18", pretrained=True), num_classes=10, in_channels=1, image_size=32)
    with pytest.raises(SpecError):
        build_model(ModelSpec(name="lenet", pretrained=True), num_classes=10, in_channels=1, image_size=28)


def test_unknown_model_lists_choices() -> None:
    with pytest.raises(SsbenchError, match="resnet20"):
        build_model(ModelSpec(name="nope"), num_classes=10, in_channels=3, image_size=32)
