"""Rule-engine edge cases against independent computations: brsf's per-step draw on the layer's
device, DFA on convolutions that pad outside the convolution, unbatched inputs."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ssbench.errors import SpecError
from ssbench.rules import convert
from ssbench.rules.base import layer_generator, xavier_bound
from ssbench.rules.dfa import conv_taps_per_input

RULES_WITH_B = ["bp", "fa", "usf", "frsf", "brsf", "ifa"]
CUDA = torch.cuda.is_available()


# ------------------------------------------------------------------ brsf draws on the layer's device


def _brsf_layer(seed: int = 3, init: str = "default", device: str = "cpu") -> nn.Module:
    from ssbench.rules import make_rule

    torch.manual_seed(0)
    return convert(nn.Linear(9, 7).to(device), make_rule("brsf", init=init), seed=seed)


@pytest.mark.parametrize("init", ["default", "xavier"])
def test_brsf_cpu_draw_is_the_hand_built_cpu_generators(init: str) -> None:
    layer = _brsf_layer(init=init)
    layer(torch.randn(2, 9))  # a training forward: step 1
    layer(torch.randn(2, 9))  # step 2
    assert int(layer.feedback_step) == 2
    gen = torch.Generator(device="cpu").manual_seed(0)  # any state: re-seeded below
    layer_generator(3, 0, 2, reuse=gen)
    if init == "xavier":
        b = xavier_bound(9, 7)
        expected = torch.empty(7, 9, dtype=torch.float32).uniform_(-b, b, generator=gen).abs()
    else:
        expected = torch.randn(7, 9, generator=gen, dtype=torch.float32).abs()
    assert torch.equal(layer.step_draw_abs(), expected)
    assert layer._step_gen.device == torch.device("cpu")


def test_brsf_same_seed_and_step_give_the_same_draw() -> None:
    a, b, other = _brsf_layer(seed=3), _brsf_layer(seed=3), _brsf_layer(seed=4)
    for layer in (a, b, other):
        layer(torch.randn(2, 9))
    assert torch.equal(a.step_draw_abs(), b.step_draw_abs())
    assert torch.equal(a.step_draw_abs(), a.step_draw_abs())  # re-seeded per call, not advanced
    assert not torch.equal(a.step_draw_abs(), other.step_draw_abs())
    first = a.step_draw_abs().clone()
    a(torch.randn(2, 9))
    assert not torch.equal(a.step_draw_abs(), first)  # the next step redraws


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (this machine has none)")
def test_brsf_draws_on_the_cuda_device_reproducibly() -> None:
    a, b = _brsf_layer(device="cuda"), _brsf_layer(device="cuda")
    x = torch.randn(2, 9, device="cuda")
    a(x), b(x)
    draw = a.step_draw_abs()
    assert draw.device.type == "cuda" and a._step_gen.device.type == "cuda"
    assert torch.equal(draw, b.step_draw_abs())  # same seed and step: same numbers on the device
    big = convert(nn.Linear(512, 512).cuda(), "brsf", seed=1)
    big(torch.randn(2, 512, device="cuda"))
    r = big.step_draw_abs()
    assert abs(float(r.mean()) - (2 / torch.pi) ** 0.5) < 0.01  # E|N(0, 1)| = sqrt(2 / pi)
    # back on the CPU the layer draws the CPU numbers again (generator rebuilt for the device)
    a.cpu()
    gen = layer_generator(3, 0, 1)
    assert torch.equal(a.step_draw_abs(), torch.randn(7, 9, generator=gen).abs())


# ------------------------------------------------------------------ DFA: padding outside the conv


_PADDED_CONVS = {
    "reflect": dict(kernel_size=3, padding=1, padding_mode="reflect"),
    "circular": dict(kernel_size=3, padding=(2, 1), padding_mode="circular"),
    "same_even": dict(kernel_size=(4, 3), dilation=(1, 2), padding="same"),
}


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # torch's own, from plain
@pytest.mark.parametrize("kind", sorted(_PADDED_CONVS))
def test_dfa_conv_padded_outside_gets_B_sized_by_its_real_input(kind: str) -> None:
    torch.manual_seed(10)
    conv = nn.Conv2d(3, 4, **_PADDED_CONVS[kind]).double()
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64)
    out_hw = conv(x).shape[2:]
    net = nn.Sequential(conv, nn.Flatten(), nn.Linear(4 * out_hw.numel(), 5)).double()
    plain_conv = copy.deepcopy(conv)
    convert(net, "dfa", seed=2)
    xg = x.clone().requires_grad_(True)
    out = net(xg)
    g = torch.randn_like(out)
    (out * g).sum().backward()  # e = g
    B_conv, B_lin = net[0].feedback_state, net[2].feedback_state
    assert B_conv.shape == (5, 3 * 7 * 8)  # the real input, not the padded one
    # by hand: e B_l reshaped to x, no pad backward in between
    torch.testing.assert_close(xg.grad, (g @ B_conv).view(x.shape), rtol=0, atol=1e-12)
    # the conv's weight gradient is the ordinary one for the error DFA delivers to its output
    delivered = (g @ B_lin).view(2, 4, *out_hw)
    plain_conv(x).backward(delivered)
    torch.testing.assert_close(net[0].weight.grad, plain_conv.weight.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(net[0].bias.grad, plain_conv.bias.grad, rtol=0, atol=1e-12)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize(
    "conf",
    [dict(kernel_size=3, padding=1), dict(kernel_size=3, stride=2, padding=2, dilation=2),
     dict(kernel_size=(4, 3), dilation=(1, 2), padding="same"), *_PADDED_CONVS.values()],
)
def test_conv_taps_per_input_counts_what_the_transposed_conv_sums(conf: dict) -> None:
    """Mean number of (output, tap) pairs per real input: autograd's input gradient of sum(conv(x))
    with an all-ones kernel counts them, through whatever padding the layer does."""
    conv = nn.Conv2d(1, 1, bias=False, **conf).double()
    nn.init.ones_(conv.weight)
    x = torch.ones(1, 1, 7, 8, dtype=torch.float64, requires_grad=True)
    conv(x).sum().backward()
    assert conv_taps_per_input(conv, (7, 8)) == pytest.approx(float(x.grad.mean()), rel=1e-12)


# ------------------------------------------------------------------ unbatched inputs


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("rule", RULES_WITH_B)
@pytest.mark.parametrize("kind", ["zeros", "reflect", "same_even"])
def test_unbatched_conv_input_gives_the_batched_gradients(rule: str, kind: str) -> None:
    torch.manual_seed(11)
    conf = dict(kernel_size=3, padding=1) if kind == "zeros" else _PADDED_CONVS[kind]
    plain = nn.Conv2d(3, 4, **conf).double()
    conv = convert(copy.deepcopy(plain), rule, seed=5)
    batched = copy.deepcopy(conv)  # the same B (brsf: the same step counter)
    x = torch.randn(3, 7, 8, dtype=torch.float64)
    xg = x.clone().requires_grad_(True)
    out = conv(xg)
    torch.testing.assert_close(out, plain(x), rtol=0, atol=1e-12)  # plain nn.Conv2d takes (C, H, W) too
    g = torch.randn_like(out)
    out.backward(g)
    xb = x.unsqueeze(0).requires_grad_(True)
    batched(xb).backward(g.unsqueeze(0))
    torch.testing.assert_close(xg.grad, xb.grad.squeeze(0), rtol=0, atol=0)
    torch.testing.assert_close(conv.weight.grad, batched.weight.grad, rtol=0, atol=0)
    torch.testing.assert_close(conv.bias.grad, batched.bias.grad, rtol=0, atol=0)
    assert int(conv.feedback_step) == int(batched.feedback_step)  # brsf: one step, not two


@pytest.mark.parametrize("rule", RULES_WITH_B)
def test_unbatched_linear_input_gives_grad_out_times_B(rule: str) -> None:
    torch.manual_seed(12)
    layer = convert(nn.Linear(6, 4).double(), rule, seed=1)
    x = torch.randn(6, dtype=torch.float64, requires_grad=True)
    g = torch.randn(4, dtype=torch.float64)
    layer(x).backward(g)
    torch.testing.assert_close(x.grad, g @ layer.feedback_tensor(), rtol=0, atol=1e-12)
    torch.testing.assert_close(layer.weight.grad, torch.outer(g, x.detach()), rtol=0, atol=1e-12)


def test_dfa_refuses_an_unbatched_input_in_one_line() -> None:
    conv_net = convert(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(0), nn.Linear(4 * 5 * 5, 2)), "dfa")
    with pytest.raises(SpecError, match=r"^dfa needs batched inputs; .*\(C, H, W\).*unsqueeze\(0\)\)$"):
        conv_net(torch.randn(3, 7, 7))
    mlp = convert(nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2)), "dfa")
    with pytest.raises(SpecError, match=r"\(in_features,\)"):
        mlp(torch.randn(6))
    # without a backward to run (no_grad, exact gradients) an unbatched input is fine, as in nn.Conv2d
    with torch.no_grad():
        assert conv_net(torch.randn(3, 7, 7)).shape == (2,)


def test_brsf_step_number_follows_the_buffer_without_reading_it_each_step() -> None:
    """brsf knows its step on the host (no device sync per layer); whatever else writes the counter
    (load_state_dict, an in-place restore, a deepcopy) is seen, so the draw always matches the buffer."""
    from ssbench.models import build_model
    from ssbench.specs import ModelSpec

    model = convert(build_model(ModelSpec(name="lenet"), num_classes=10, in_channels=1, image_size=28), "brsf", seed=1)
    layer = next(m for m in model.modules() if hasattr(m, "_step_number"))
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    model.train()
    for i in range(3):
        torch.nn.functional.cross_entropy(model(x), y).backward()
        assert layer._step_number() == int(layer.feedback_step) == i + 1
    saved = copy.deepcopy(model.state_dict())
    torch.nn.functional.cross_entropy(model(x), y).backward()
    model.load_state_dict(saved)
    assert layer._step_number() == 3
    with torch.no_grad():
        layer.feedback_step.copy_(torch.tensor(10))
    assert layer._step_number() == 10
    twin = copy.deepcopy(model)
    twin_layer = next(m for m in twin.modules() if hasattr(m, "_step_number"))
    torch.nn.functional.cross_entropy(twin(x), y).backward()
    assert twin_layer._step_number() == int(twin_layer.feedback_step) == 11


@pytest.mark.parametrize("rule", ["fa", "usf", "dfa"])
def test_weight_gradients_keep_the_weights_layout(rule: str) -> None:
    """A one-channel conv's weight gradient has the weight's strides (DDP copies, and warns, otherwise)
    and, in channels-last, channels-last ones."""
    torch.manual_seed(0)
    for fmt in (torch.contiguous_format, torch.channels_last):
        model = convert(nn.Sequential(nn.Conv2d(1, 6, 5), nn.Flatten(), nn.Linear(6 * 4 * 4, 3)), rule, seed=0)
        model = model.to(memory_format=fmt)
        x = torch.rand(4, 1, 8, 8).contiguous(memory_format=fmt)
        model(x).sum().backward()
        conv = model[0]
        assert conv.weight.grad.stride() == conv.weight.stride()
