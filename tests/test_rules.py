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
from ssbench.rules import (
    ConversionWarning,
    alignment_metrics,
    angle_deg,
    check_conversion,
    convert,
    convert_from_config,
    exact_gradients,
    feedback_layers,
    model_rule,
    rule_config,
)
from ssbench.rules.base import layer_generator

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
    used = layer.feedback_state.abs() * layer.weight.sign()  # |R| sign(W), W has no zero entry
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


# ------------------------------------------------------------------ B formulas, built independently
#
# Each B below is rebuilt from W (after optimiser steps) and the documented seeding only, never
# read from the layer, and the input gradient is checked against a hand matmul / conv_transpose2d.


def _layer_and_input(kind: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(12)
    if kind == "linear":
        return nn.Linear(7, 5).double(), torch.randn(6, 7, dtype=torch.float64)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2).double()
    return conv, torch.randn(3, 4, 9, 10, dtype=torch.float64)


def _rule_step(layer: nn.Module, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward/backward with a fixed random upstream error; (input gradient, that error)."""
    xg = x.clone().requires_grad_(True)
    out = layer(xg)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(100 + k), dtype=out.dtype)
    out.backward(g)
    return xg.grad, g


def _hand_input_grad(layer: nn.Module, x: torch.Tensor, g: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        return g @ B  # grad_out (N x out) @ B (out x in)
    s, p, d, k = layer.stride, layer.padding, layer.dilation, layer.kernel_size
    op = [x.shape[2 + i] - ((g.shape[2 + i] - 1) * s[i] - 2 * p[i] + d[i] * (k[i] - 1) + 1) for i in range(2)]
    return F.conv_transpose2d(g, B, None, s, p, tuple(op), layer.groups, d)


def _draw(shape: torch.Size, seed: int, step: int = 0) -> torch.Tensor:
    """The documented draw: N(0, 1) in float32 from the (seed, layer 0, step) CPU generator."""
    return torch.randn(shape, generator=layer_generator(seed, 0, step), dtype=torch.float32).double()


def _rms(w: torch.Tensor) -> torch.Tensor:
    return (w.double() ** 2).mean().sqrt()


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_usf_B_is_rms_sign_of_the_current_weight(kind: str) -> None:
    layer, x = _layer_and_input(kind)
    convert(layer, "usf")
    opt = torch.optim.SGD(layer.parameters(), lr=0.3)
    for k in range(3):
        w = layer.weight.detach().clone()
        gx, g = _rule_step(layer, x, k)
        torch.testing.assert_close(gx, _hand_input_grad(layer, x, g, _rms(w) * w.sign()), rtol=0, atol=1e-12)
        opt.step()
        opt.zero_grad()
        assert not torch.equal(layer.weight.detach(), w)  # the step really changed W


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_fa_B_is_fixed_R_scaled_to_initial_norm(kind: str) -> None:
    layer, x = _layer_and_input(kind)
    w0 = layer.weight.detach().clone()
    convert(layer, "fa", seed=21)
    r = _draw(w0.shape, 21)
    B = r * (w0.norm() / r.norm())
    first = layer.feedback_tensor().clone()
    opt = torch.optim.SGD(layer.parameters(), lr=0.3)
    for k in range(3):
        gx, g = _rule_step(layer, x, k)
        torch.testing.assert_close(gx, _hand_input_grad(layer, x, g, B), rtol=0, atol=1e-12)
        opt.step()
        opt.zero_grad()
        assert torch.equal(layer.feedback_tensor(), first)  # bitwise fixed while W moves
    assert not torch.equal(layer.weight.detach(), w0)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_frsf_magnitudes_fixed_signs_follow_weight(kind: str) -> None:
    layer, x = _layer_and_input(kind)
    w0 = layer.weight.detach().clone()
    convert(layer, "frsf", seed=22)
    r = _draw(w0.shape, 22)
    magnitude = r.abs() * (w0.norm() / r.norm())  # ||B_0|| = || |R| sign(W_0) || = ||W_0||
    opt = torch.optim.SGD(layer.parameters(), lr=2.0)  # large: some weights change sign
    for k in range(3):
        w = layer.weight.detach().clone()
        gx, g = _rule_step(layer, x, k)
        torch.testing.assert_close(gx, _hand_input_grad(layer, x, g, magnitude * w.sign()), rtol=0, atol=1e-12)
        opt.step()
        opt.zero_grad()
    flipped = (layer.weight.detach().sign() != w0.sign()).sum()
    assert flipped > 0
    B = layer.feedback_tensor()
    torch.testing.assert_close(B.abs(), magnitude, rtol=1e-14, atol=0)
    assert torch.equal(B.sign(), layer.weight.detach().sign())


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_brsf_B_redrawn_per_training_step_fixed_in_eval(kind: str) -> None:
    layer, x = _layer_and_input(kind)
    convert(layer, "brsf", seed=23)
    opt = torch.optim.SGD(layer.parameters(), lr=0.3)

    def hand_B(step: int) -> torch.Tensor:
        w = layer.weight.detach()
        return _draw(w.shape, 23, step).abs() * w.sign() * _rms(w)

    grads = []
    for k in range(1, 4):  # training step k draws with counter k
        B = hand_B(k)
        gx, g = _rule_step(layer, x, k)
        torch.testing.assert_close(gx, _hand_input_grad(layer, x, g, B), rtol=0, atol=1e-12)
        grads.append(gx)
        opt.step()
        opt.zero_grad()
    layer.eval()
    B3 = hand_B(3)  # the last training draw, with the W the optimiser left
    gx_a, g = _rule_step(layer, x, 0)
    gx_b, _ = _rule_step(layer, x, 0)
    torch.testing.assert_close(gx_a, _hand_input_grad(layer, x, g, B3), rtol=0, atol=1e-12)
    assert torch.equal(gx_a, gx_b)  # constant between eval backward calls
    assert not torch.equal(hand_B(1), hand_B(2))  # and it did change between training steps
    with torch.no_grad():  # W changed in eval: B follows W's sign with the same frozen draw
        layer.weight.mul_(-0.5)
    gx_c, g = _rule_step(layer, x, 0)
    torch.testing.assert_close(gx_c, _hand_input_grad(layer, x, g, hand_B(3)), rtol=0, atol=1e-12)
    assert int(layer.feedback_step) == 3


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_ifa_B_fixed_across_steps(kind: str) -> None:
    layer, x = _layer_and_input(kind)
    w0 = layer.weight.detach().clone()
    convert(layer, "ifa", theta=60.0, seed=24)
    B = layer.feedback_tensor().clone()
    # independent of the Gram-Schmidt code: the angle and the norm by the cosine in float64
    cos = float((B * w0).sum() / (B.norm() * w0.norm()))
    assert cos == pytest.approx(math.cos(math.radians(60.0)), abs=1e-12)
    assert float(B.norm()) == pytest.approx(float(w0.norm()), rel=1e-12)
    opt = torch.optim.SGD(layer.parameters(), lr=0.3)
    for k in range(3):
        gx, g = _rule_step(layer, x, k)
        torch.testing.assert_close(gx, _hand_input_grad(layer, x, g, B), rtol=0, atol=1e-12)
        opt.step()
        opt.zero_grad()
        assert torch.equal(layer.feedback_tensor(), B)
    assert not torch.equal(layer.weight.detach(), w0)


def test_ifa_hits_requested_angle_on_a_bp_trained_mlp() -> None:
    from ssbench.data.sources import load_digits
    from ssbench.specs import DataSpec

    raw = load_digits(DataSpec(name="digits"))
    x, y = raw.train_images.flatten(1), raw.train_labels
    torch.manual_seed(16)
    mlp = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(mlp.parameters(), lr=1e-2)
    for _ in range(150):  # full-batch plain autograd, well under a second
        opt.zero_grad()
        F.cross_entropy(mlp(x), y).backward()
        opt.step()
    with torch.no_grad():
        acc = float((mlp(raw.test_images.flatten(1)).argmax(1) == raw.test_labels).float().mean())
    assert acc > 0.9  # genuinely trained weights, not a rescaled init
    for theta in [0.0, 15.0, 45.0, 90.0, 135.0]:
        net = convert(copy.deepcopy(mlp), "ifa", theta=theta, seed=3)
        for _, layer in feedback_layers(net):
            w0, B = layer.weight.detach(), layer.feedback_tensor()
            assert angle_deg(w0, B) == pytest.approx(theta, abs=0.01)
            cos = float((B.double() * w0.double()).sum() / (B.double().norm() * w0.double().norm()))
            assert cos == pytest.approx(math.cos(math.radians(theta)), abs=1e-6)
            assert float(B.double().norm()) == pytest.approx(float(w0.double().norm()), rel=1e-6)


# ------------------------------------------------------------------ precision, copies, checkpoints


@pytest.mark.parametrize("rule", ["fa", "frsf", "ifa", "brsf", "dfa"])
def test_float64_copy_uses_the_float32_draw(rule: str) -> None:
    torch.manual_seed(17)
    net = nn.Sequential(nn.Linear(10, 8), nn.Tanh(), nn.Linear(8, 3))
    direct64 = convert(copy.deepcopy(net).double(), rule, seed=5)  # converted in float64
    convert(net, rule, seed=5)
    x = torch.randn(4, 10, requires_grad=True)  # dfa: so the first layer's B_l is drawn too
    for _ in range(2):  # brsf: two training steps; dfa: B_l drawn at the first backward
        net(x).sum().backward()
        direct64(x.double()).sum().backward()
    twin = copy.deepcopy(net).double()  # what the attack sanity check does
    for (_, a), (_, b), (_, c) in zip(feedback_layers(net), feedback_layers(twin), feedback_layers(direct64)):
        b32 = a.feedback_tensor()
        for other in (b, c):
            b64 = other.feedback_tensor()
            assert b64.dtype == torch.float64
            torch.testing.assert_close(b64, b32.double(), rtol=1e-6, atol=1e-9)


def test_dfa_deepcopy_double_fills_its_own_error_box() -> None:
    torch.manual_seed(13)
    mlp = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    convert(mlp, "dfa", seed=4)
    x = torch.randn(8, 6)
    y = torch.randint(0, 3, (8,))
    F.cross_entropy(mlp(x.clone().requires_grad_(True)), y).backward()  # draws every B_l (float32)
    twin = copy.deepcopy(mlp).double()
    twin.zero_grad()
    x64 = x.double().requires_grad_(True)
    F.cross_entropy(twin(x64), y).backward()
    for (_, a), (_, b) in zip(feedback_layers(mlp), feedback_layers(twin)):
        assert torch.equal(b.feedback_state, a.feedback_state.double())
    # the twin's DFA backward, by hand in float64: layer l's input receives e B_l
    W = [twin[i].weight.detach() for i in (0, 2, 4)]
    b = [twin[i].bias.detach() for i in (0, 2, 4)]
    B1, B2, B3 = (twin[i].feedback_state for i in (0, 2, 4))
    h1 = (x64.detach() @ W[0].T + b[0]).tanh()
    h2 = (h1 @ W[1].T + b[1]).tanh()
    logits = h2 @ W[2].T + b[2]
    e = (logits.softmax(1) - F.one_hot(y, 3).double()) / 8
    d2 = (e @ B3) * (1 - h2**2)
    d1 = (e @ B2) * (1 - h1**2)
    torch.testing.assert_close(x64.grad, e @ B1, rtol=0, atol=1e-12)
    torch.testing.assert_close(twin[4].weight.grad, e.T @ h2, rtol=0, atol=1e-12)
    torch.testing.assert_close(twin[2].weight.grad, d2.T @ h1, rtol=0, atol=1e-12)
    torch.testing.assert_close(twin[0].weight.grad, d1.T @ x64.detach(), rtol=0, atol=1e-12)
    # the original still fills its own box
    mlp.zero_grad()
    F.cross_entropy(mlp(x), y).backward()
    assert mlp[0].weight.grad is not None and mlp[0].weight.grad.abs().sum() > 0


def test_skip_is_persisted_and_rebuilt_from_a_checkpoint(tmp_path) -> None:  # noqa: ANN001
    from ssbench.specs import DataSpec, ModelSpec, RuleSpec, TrainSpec
    from ssbench.training.checkpoint import (
        ModelMeta,
        build_network,
        model_from_checkpoint,
        read_checkpoint,
        save_checkpoint,
    )

    spec = TrainSpec(kind="train", data=DataSpec(name="digits"), model=ModelSpec(name="lenet"),
                     rule=RuleSpec(name="fa", skip=("net.fc*",)))
    meta = ModelMeta(model=spec.model.model_dump(mode="json"), num_classes=10, in_channels=1, image_size=28,
                     mean=[0.5], std=[0.25], task="classification", rule=None)
    torch.manual_seed(18)
    model = convert(build_network(meta, spec), spec.rule, seed=9)
    names = [n for n, _ in feedback_layers(model)]
    assert names and not any(n.startswith("net.fc") for n in names)
    assert rule_config(model) == {"name": "fa", "seed": 9, "skip": ["net.fc*"]}
    path = save_checkpoint(tmp_path / "m.pt", model, meta, spec, epoch=1, run_id=None)
    rebuilt, _, _ = model_from_checkpoint(read_checkpoint(path))  # strict load: fails if skip is lost
    assert [n for n, _ in feedback_layers(rebuilt)] == names
    for (_, a), (_, b) in zip(feedback_layers(model), feedback_layers(rebuilt)):
        assert torch.equal(a.feedback_tensor(), b.feedback_tensor())
    assert type(rebuilt.net.fc1) is nn.Linear


# ------------------------------------------------------------------ zero weights


def test_init_rms_matches_torch_default_init() -> None:
    from ssbench.rules.base import init_rms

    torch.manual_seed(19)
    for layer in (nn.Linear(9, 20000), nn.Conv2d(6, 6000, (3, 2), groups=2)):
        measured = float(layer.weight.detach().double().pow(2).mean().sqrt())
        assert init_rms(layer.weight) == pytest.approx(measured, rel=0.01)  # 1/sqrt(3 fan_in)


@pytest.mark.parametrize("rule", ["fa", "frsf", "ifa", "dfa"])
def test_zero_weight_layer_gets_init_scale_feedback(rule: str) -> None:
    torch.manual_seed(14)
    net = nn.Sequential(nn.Linear(12, 9), nn.Tanh(), nn.Linear(9, 4))
    with torch.no_grad():
        net[2].weight.zero_()  # like torchvision's ViT head
    convert(net, rule, seed=1)
    x = torch.randn(5, 12)
    F.cross_entropy(net(x), torch.tensor([0, 1, 2, 3, 0])).backward()
    B = net[2].feedback_tensor()
    init_scale = 1 / math.sqrt(3 * 9)  # torch's default init std for fan_in 9
    if rule == "dfa":  # B_l (4 x 9): the documented draw at that scale
        expected = torch.randn(4, 9, generator=layer_generator(1, 1), dtype=torch.float32) * init_scale
    else:  # fa: R; frsf: |R| with R's own sign where W = 0; ifa: no direction to keep, so R: all
        r = torch.randn(4, 9, generator=layer_generator(1, 1), dtype=torch.float32)  # R at the init norm
        expected = r * (init_scale * math.sqrt(r.numel()) / r.norm())
    torch.testing.assert_close(B, expected, rtol=1e-6, atol=1e-8)
    assert torch.isfinite(B).all() and (B != 0).all()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())
    assert net[0].weight.grad.abs().sum() > 0  # the error gets past the zero layer


def test_frsf_zero_entries_take_the_sign_of_R() -> None:
    torch.manual_seed(25)
    layer = nn.Linear(8, 6)
    with torch.no_grad():
        layer.weight[:, :3] = 0.0
        layer.weight[0, 3] = -0.0  # a negative zero is still zero
    w0 = layer.weight.detach().clone()
    convert(layer, "frsf", seed=2)
    r = torch.randn(6, 8, generator=layer_generator(2, 0), dtype=torch.float32)
    r = r * (w0.norm() / r.norm())  # every |B| entry is |R|, so ||B|| = ||R|| = ||W_0||
    expected = r.abs() * torch.where(w0 == 0, r.sign(), w0.sign())
    torch.testing.assert_close(layer.feedback_tensor(), expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("rule", ["usf", "brsf"])
def test_zero_weight_layer_sign_rules_give_zero_feedback(rule: str) -> None:
    net = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    with torch.no_grad():
        net[2].weight.zero_()
    convert(net, rule)
    x = torch.randn(4, 6, requires_grad=True)
    net(x).sum().backward()
    assert torch.equal(net[2].feedback_tensor(), torch.zeros(3, 5))  # sign(0) = 0: documented
    assert torch.equal(x.grad, torch.zeros_like(x.grad))
    assert net[2].weight.grad.abs().sum() > 0  # the zero layer itself still learns


# ------------------------------------------------------------------ layers the rule cannot reach


class _FunctionalUse(nn.Module):
    """Calls F.linear(x, self.lin.weight) itself, as torchvision's Swin does with attention's qkv."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 6)
        self.bn = nn.BatchNorm1d(6)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.linear(x, self.lin.weight, self.lin.bias)
        return self.head(self.drop(self.bn(h).tanh()))


def test_convert_with_example_input_leaves_functionally_used_layers_exact() -> None:
    torch.manual_seed(20)
    net = _FunctionalUse()
    fresh = copy.deepcopy(net)
    example = torch.randn(4, 6) + 3.0  # a batch mean BatchNorm would record
    running, rng = net.bn.running_mean.clone(), torch.get_rng_state()
    with pytest.warns(ConversionWarning, match=r"1 of 2 layers never run .*: lin$"):
        convert(net, "brsf", seed=2, example_input=example)
    assert [n for n, _ in feedback_layers(net)] == ["head"]
    assert type(net.lin) is nn.Linear
    assert [r.layer for r in alignment_metrics(net)] == ["head"]
    # the probe changed no state: BatchNorm statistics and the global RNG (dropout) as before
    assert torch.equal(net.bn.running_mean, running) and int(net.bn.num_batches_tracked) == 0
    assert torch.equal(torch.get_rng_state(), rng)
    # the checkpointed config rebuilds the same conversion without an example: same layer index
    config = rule_config(net)
    assert config["skip"] == ["lin"]
    other = convert_from_config(copy.deepcopy(fresh), config)
    x = torch.randn(4, 6)
    net(x).sum().backward()
    other(x).sum().backward()
    assert torch.equal(net.head.feedback_tensor(), other.head.feedback_tensor())
    # a model converted without the example: check_conversion names the unreachable layer
    blind = convert(copy.deepcopy(fresh), "fa")
    assert [r.layer for r in alignment_metrics(blind)] == ["lin", "head"]  # nothing has run yet
    with pytest.warns(ConversionWarning, match="lin"):
        assert check_conversion(blind, torch.randn(4, 6)) == ["lin"]
    # once the model has run, alignment metrics leave out the layer the rule never reached
    blind(torch.randn(4, 6)).sum().backward()
    with pytest.warns(ConversionWarning, match="left out of the alignment metrics: lin$"):
        assert [r.layer for r in alignment_metrics(blind)] == ["head"]


# ------------------------------------------------------------------ padding='same'


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # torch's own, from plain
@pytest.mark.parametrize("rule", ["bp", "fa"])
@pytest.mark.parametrize("conf", [dict(kernel_size=2), dict(kernel_size=(4, 3), dilation=(1, 2))])
def test_same_padding_with_even_effective_kernel(rule: str, conf: dict) -> None:
    torch.manual_seed(15)
    conv = nn.Conv2d(3, 4, padding="same", **conf).double()
    plain = copy.deepcopy(conv)
    convert(conv, rule, seed=1)
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64)
    xg = x.clone().requires_grad_(True)
    out = conv(xg)
    torch.testing.assert_close(out, plain(x), rtol=0, atol=1e-12)
    g = torch.randn_like(out)
    out.backward(g)
    # independent: plain autograd through a 'same' conv whose weight is B is the adjoint applied to g
    xr = x.clone().requires_grad_(True)
    F.conv2d(xr, conv.feedback_tensor(), None, 1, "same", conv.dilation, 1).backward(g)
    torch.testing.assert_close(xg.grad, xr.grad, rtol=0, atol=1e-12)
    xp = x.clone().requires_grad_(True)
    plain(xp).backward(g)
    torch.testing.assert_close(conv.weight.grad, plain.weight.grad, rtol=0, atol=1e-12)


def test_same_padding_with_stride_is_a_spec_error() -> None:
    conv = convert(nn.Conv2d(2, 2, 3, padding="same"), "fa")
    conv.stride = (2, 2)  # nn.Conv2d refuses this at construction; a later edit reaches forward
    with pytest.raises(SpecError, match="stride 1"):
        conv(torch.randn(1, 2, 5, 5))
