"""The rule engine against independent computations: plain autograd, hand matmuls,
conv_transpose2d, finite differences."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssbench.errors import SpecError, UnknownNameError
from ssbench.rules import alignment_metrics, angle_deg, convert, exact_gradients, feedback_layers, model_rule

RULES_WITH_B = ["bp", "fa", "usf", "frsf", "brsf", "ifa"]


def _plain_grads(model: nn.Module, x: torch.Tensor, loss_fn) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x = x.clone().requires_grad_(True)
    model.zero_grad()
    loss_fn(model(x)).backward()
    return x.grad.clone(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _loss(out: torch.Tensor) -> torch.Tensor:
    # a loss whose gradient is not uniform in the logits
    return (out.flatten(1) ** 2 * torch.linspace(0.5, 2.0, out.flatten(1).shape[1], dtype=out.dtype)).sum()


@pytest.mark.parametrize("arch", ["lenet", "resnet20"])
def test_bp_equals_plain_autograd_float64(arch: str) -> None:
    from ssbench.models import build_model
    from ssbench.specs import ModelSpec

    torch.manual_seed(0)
    channels, size = (1, 28) if arch == "lenet" else (3, 32)
    plain = build_model(ModelSpec(name=arch), num_classes=10, in_channels=channels, image_size=size).double()
    plain.train()
    converted = convert(copy.deepcopy(plain), "bp")
    assert len(feedback_layers(converted)) >= 3
    x = torch.randn(4, channels, size, size, dtype=torch.float64)
    gx0, gw0 = _plain_grads(plain, x, _loss)
    gx1, gw1 = _plain_grads(converted, x, _loss)
    torch.testing.assert_close(gx1, gx0, rtol=0, atol=1e-10)
    assert gw0.keys() == gw1.keys()
    for name in gw0:
        torch.testing.assert_close(gw1[name], gw0[name], rtol=0, atol=1e-10, msg=name)


@pytest.mark.parametrize("rule", RULES_WITH_B)
def test_linear_input_grad_is_grad_out_times_B_with_leading_dims(rule: str) -> None:
    torch.manual_seed(1)
    layer = nn.Linear(7, 5).double()
    plain = copy.deepcopy(layer)
    convert(layer, rule, seed=3)
    x = torch.randn(2, 3, 7, dtype=torch.float64, requires_grad=True)  # two leading batch dims
    g = torch.randn(2, 3, 5, dtype=torch.float64)
    layer(x).backward(g)
    B = layer.feedback_tensor()  # the B of the step just taken (brsf: this step's draw)
    assert B.shape == layer.weight.shape
    expected = torch.einsum("abo,oi->abi", g, B)  # hand-written: grad_out @ B
    torch.testing.assert_close(x.grad, expected, rtol=0, atol=1e-12)
    x2 = x.detach().clone().requires_grad_(True)
    plain(x2).backward(g)
    torch.testing.assert_close(layer.weight.grad, plain.weight.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(layer.bias.grad, plain.bias.grad, rtol=0, atol=1e-12)
    if rule != "bp":
        assert not torch.allclose(x.grad, x2.grad)  # the rule really changed the input gradient


@pytest.mark.parametrize("rule", RULES_WITH_B)
@pytest.mark.parametrize(
    "conf",
    [
        dict(in_channels=4, out_channels=6, kernel_size=3, stride=1, padding=1),
        dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, dilation=1),
        dict(in_channels=4, out_channels=8, kernel_size=3, stride=2, padding=2, dilation=2, groups=2),
        dict(in_channels=6, out_channels=6, kernel_size=(3, 5), stride=(1, 2), padding=(1, 0), groups=3, bias=False),
    ],
)
def test_conv_input_grad_is_conv_transpose_with_B(rule: str, conf: dict) -> None:
    torch.manual_seed(2)
    layer = nn.Conv2d(**conf).double()
    plain = copy.deepcopy(layer)
    convert(layer, rule, seed=5)
    x = torch.randn(3, conf["in_channels"], 11, 12, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    g = torch.randn_like(out)
    out.backward(g)
    B = layer.feedback_tensor()
    # conv_transpose2d is the adjoint of conv2d; output_padding recovers the exact input size
    s, p, d = layer.stride, layer.padding, layer.dilation
    k = layer.kernel_size
    op = [x.shape[2 + i] - ((out.shape[2 + i] - 1) * s[i] - 2 * p[i] + d[i] * (k[i] - 1) + 1) for i in range(2)]
    expected = F.conv_transpose2d(g, B, None, s, p, tuple(op), layer.groups, d)
    torch.testing.assert_close(x.grad, expected, rtol=0, atol=1e-11)
    x2 = x.detach().clone().requires_grad_(True)
    plain(x2).backward(g)
    torch.testing.assert_close(layer.weight.grad, plain.weight.grad, rtol=0, atol=1e-11)
    if layer.bias is not None:
        torch.testing.assert_close(layer.bias.grad, plain.bias.grad, rtol=0, atol=1e-11)


def test_dfa_hidden_layers_receive_B_e_by_hand() -> None:
    torch.manual_seed(3)
    mlp = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)).double()
    convert(mlp, "dfa", seed=11)
    x = torch.randn(8, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (8,))
    mlp.zero_grad()
    F.cross_entropy(mlp(x), y).backward()
    W1, W2, W3 = (mlp[i].weight.detach() for i in (0, 2, 4))
    b1, b2 = mlp[0].bias.detach(), mlp[2].bias.detach()
    B2, B3 = mlp[2].feedback_state, mlp[4].feedback_state  # B_l maps e to the input of layer l
    assert B2.shape == (3, 5) and B3.shape == (3, 4)
    # independent forward and DFA backward, by hand
    a1 = x @ W1.T + b1
    h1 = a1.relu()
    a2 = h1 @ W2.T + mlp[2].bias.detach()
    h2 = a2.relu()
    logits = h2 @ W3.T + mlp[4].bias.detach()
    e = (logits.softmax(1) - F.one_hot(y, 3).double()) / 8  # dL/dlogits of the mean CE
    d3 = e
    d2 = (e @ B3) * (a2 > 0)  # hidden layer 2 receives B e
    d1 = (e @ B2) * (a1 > 0)  # hidden layer 1 receives B e
    torch.testing.assert_close(mlp[4].weight.grad, d3.T @ h2, rtol=0, atol=1e-12)
    torch.testing.assert_close(mlp[2].weight.grad, d2.T @ h1, rtol=0, atol=1e-12)
    torch.testing.assert_close(mlp[0].weight.grad, d1.T @ x, rtol=0, atol=1e-12)
    torch.testing.assert_close(mlp[0].bias.grad, d1.sum(0), rtol=0, atol=1e-12)
    assert b1.shape == (5,) and b2.shape == (4,)


def test_dfa_matrices_round_trip_through_state_dict() -> None:
    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    convert(net, "dfa", seed=1)
    net(torch.randn(2, 1, 8, 8)).sum().backward()
    other = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    convert(other, "dfa", seed=99)  # different seed: matrices must come from the file
    other.load_state_dict(net.state_dict())
    for (_, a), (_, b) in zip(feedback_layers(net), feedback_layers(other)):
        torch.testing.assert_close(a.feedback_state, b.feedback_state)


@pytest.mark.parametrize("rule", ["fa", "dfa", "usf", "frsf", "brsf", "ifa"])
def test_exact_gradients_same_logits_true_gradient(rule: str) -> None:
    torch.manual_seed(5)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 5 * 5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    plain = copy.deepcopy(net)
    convert(net, rule)
    x = torch.randn(2, 1, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), plain(x), rtol=0, atol=0)
    with exact_gradients(net):
        xg = x.clone().requires_grad_(True)
        logits = net(xg)
        torch.testing.assert_close(logits, plain(x), rtol=0, atol=0)
        _loss(logits).backward()
    # central finite differences of the forward loss along random directions
    for _ in range(3):
        u = torch.randn_like(x)
        h = 1e-6
        with torch.no_grad():
            fd = (_loss(net(x + h * u)) - _loss(net(x - h * u))) / (2 * h)
        assert float((xg.grad * u).sum()) == pytest.approx(float(fd), rel=1e-6, abs=1e-9)
    # and outside the context the rule's backward is back
    xr = x.clone().requires_grad_(True)
    _loss(net(xr)).backward()
    assert not torch.allclose(xr.grad, xg.grad)


def test_brsf_redraws_each_training_step_reproducibly_without_global_rng() -> None:
    def make() -> nn.Linear:
        torch.manual_seed(6)
        return convert(nn.Linear(5, 4), "brsf", seed=7)

    a, b = make(), make()
    x = torch.randn(3, 5)
    draws = []
    state = torch.get_rng_state()
    for _ in range(3):
        a(x).sum().backward()
        draws.append(a.feedback_tensor().clone())
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG was never touched
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])
    assert all(torch.equal(d.sign(), a.weight.sign()) for d in draws)
    for d in draws:
        b(x).sum().backward()
        torch.testing.assert_close(b.feedback_tensor(), d)  # same seed, same sequence
    a.eval()
    step = int(a.feedback_step)
    xg = x.clone().requires_grad_(True)
    a(xg).sum().backward()
    assert int(a.feedback_step) == step  # eval: B frozen at the last training draw
    torch.testing.assert_close(xg.grad, torch.ones(3, 4) @ draws[-1])


@pytest.mark.parametrize("theta", [0.0, 0.5, 15.0, 45.0, 90.0, 135.0])
def test_ifa_hits_requested_angle_on_random_and_pretrained_layers(theta: float) -> None:
    torch.manual_seed(8)
    net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 6 * 6, 10))
    with torch.no_grad():  # a "pretrained" scale far from any init
        net[3].weight.mul_(37.0).add_(0.2)
    convert(net, "ifa", theta=theta, seed=2)
    for row in alignment_metrics(net):
        assert row.angle_deg == pytest.approx(theta, abs=0.01)
        assert row.norm_ratio == pytest.approx(1.0, abs=1e-5)


def test_feedback_scale_follows_converted_weight() -> None:
    for rule in ["fa", "frsf", "usf", "ifa", "brsf"]:
        torch.manual_seed(9)
        layer = nn.Linear(200, 100)
        with torch.no_grad():
            layer.weight.mul_(1000.0)  # pretrained weights at a scale no init would produce
        convert(layer, rule)
        (row,) = alignment_metrics(layer)
        assert row.norm_ratio == pytest.approx(1.0, rel=0.15), rule


def test_alignment_measures_the_B_actually_used_frsf() -> None:
    torch.manual_seed(10)
    layer = convert(nn.Linear(300, 200), "frsf")
    (row,) = alignment_metrics(layer)
    used = layer.feedback_state * layer.weight.sign()
    assert row.angle_deg == pytest.approx(angle_deg(layer.weight, used), abs=1e-9)
    # the stored |R| alone is nearly orthogonal to W; the B used in backward is far from it
    assert angle_deg(layer.weight, layer.feedback_state) > 80
    assert row.angle_deg < 50


def test_angle_deg_closed_forms() -> None:
    a = torch.tensor([1.0, 0.0])
    assert angle_deg(a, torch.tensor([0.0, 2.0])) == pytest.approx(90.0)
    assert angle_deg(a, torch.tensor([1.0, 1.0])) == pytest.approx(45.0)
    assert angle_deg(a, -a) == pytest.approx(180.0)
    assert angle_deg(a, torch.tensor([1.0, math.tan(math.radians(0.001))])) == pytest.approx(0.001, abs=1e-9)


def test_convert_keeps_parameters_and_state_round_trips() -> None:
    torch.manual_seed(11)
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    params = [id(p) for p in net.parameters()]
    weights = [p.detach().clone() for p in net.parameters()]
    convert(net, "fa", seed=1)
    assert [id(p) for p in net.parameters()] == params
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), weights))
    assert model_rule(net) == "fa"
    other = convert(copy.deepcopy(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))), "fa", seed=2)
    other.load_state_dict(net.state_dict())
    for (_, a), (_, b) in zip(feedback_layers(net), feedback_layers(other)):
        assert torch.equal(a.feedback_tensor(), b.feedback_tensor())


def test_convert_errors_and_skip() -> None:
    with pytest.raises(UnknownNameError, match="unknown rule 'xfa'.*bp.*usf"):
        convert(nn.Linear(2, 2), "xfa")
    net = convert(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), "usf", skip=["1"])
    assert [n for n, _ in feedback_layers(net)] == ["0"]
    with pytest.raises(SpecError, match="already converted"):
        convert(net, "fa")
    with pytest.raises(SpecError, match="theta is an ifa option"):
        convert(nn.Linear(2, 2), "fa", theta=10)
    with pytest.raises(SpecError, match="no nn.Linear"):
        convert(nn.ReLU(), "fa")
