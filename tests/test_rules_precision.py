"""The rule engine under mixed precision (torch.autocast, bf16 on the CPU) and under torch.compile,
against independent computations: torch's own autocast autograd, plain autograd through a
straight-through layer whose backward uses B, hand matmuls, and the same model in fp32 / eager."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssbench.rules import alignment_metrics, convert, feedback_layers

ALL_RULES = ["bp", "fa", "dfa", "usf", "frsf", "brsf", "ifa"]
RULES_WITH_B = ["bp", "fa", "usf", "frsf", "brsf", "ifa"]
BF16 = torch.bfloat16


def _autocast(enabled: bool = True):  # noqa: ANN202
    return torch.autocast("cpu", dtype=BF16, enabled=enabled)


class _SmallNet(nn.Module):
    """Conv, pool, conv, two linears: every layer kind and a backward through four rule layers. Its
    own forward (not nn.Sequential's, a torch frame that torch.compile skips once a layer breaks
    the graph) so that the code between eager dfa / brsf layers still compiles."""

    def __init__(self, act: type[nn.Module] = nn.ReLU, pool: type[nn.Module] = nn.MaxPool2d) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 6, 3, padding=1), nn.Conv2d(6, 8, 3)
        self.fc1, self.fc2 = nn.Linear(8 * 4 * 4, 32), nn.Linear(32, 10)
        self.act, self.pool = act(), pool(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv2(self.pool(self.act(self.conv1(x)))))
        return self.fc2(self.act(self.fc1(x.flatten(1))))


def _small_net() -> nn.Module:
    return _SmallNet()


def _data(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Ten noisy class prototypes of 12 x 12: learnable in a few steps by every rule."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 10
    return 2 * torch.randn(10, 1, 12, 12, generator=g)[y] + torch.randn(n, 1, 12, 12, generator=g), y


def _weight_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> dict[str, torch.Tensor]:
    model.zero_grad()
    with _autocast(bf16):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


# ------------------------------------------------------------------ exactness under autocast


def test_bp_under_autocast_is_torchs_own_autocast_gradient() -> None:
    torch.manual_seed(0)
    plain = _small_net()
    converted = convert(copy.deepcopy(plain), "bp")
    x, y = _data(8)
    g0, g1 = _weight_grads(plain, x, y, True), _weight_grads(converted, x, y, True)
    for name in g0:
        assert g1[name].dtype == torch.float32  # the parameter's dtype, not the compute dtype
        torch.testing.assert_close(g1[name], g0[name], rtol=0, atol=0, msg=name)


def _straight_through(op, x, w, b, B):  # noqa: ANN001, ANN202, N803
    """Plain autograd with the rule's semantics: the value's W path gets no input gradient, the B
    path (which adds zero to the value) carries it."""
    via_b = op(x, B, None)
    return op(x.detach(), w, b) + via_b - via_b.detach()


@pytest.mark.parametrize("rule", RULES_WITH_B)
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_rule_backward_under_autocast_matches_autograd_with_B(rule: str, kind: str) -> None:
    torch.manual_seed(1)
    if kind == "linear":
        layer, x = nn.Linear(9, 5), torch.randn(2, 3, 9)
        op = F.linear
    else:
        layer, x = nn.Conv2d(3, 4, 3, stride=2, padding=1), torch.randn(2, 3, 9, 8)
        op = lambda x, w, b: F.conv2d(x, w, b, 2, 1)  # noqa: E731
    plain = copy.deepcopy(layer)
    convert(layer, rule, seed=4)
    xg = x.clone().requires_grad_(True)
    with _autocast():
        out = layer(xg)
    assert out.dtype == BF16
    g = torch.randn_like(out)
    out.backward(g)
    B = layer.feedback_tensor()  # fp32: the rule's B of this step
    assert B.dtype == torch.float32
    xr = x.clone().requires_grad_(True)
    with _autocast():
        ref = _straight_through(op, xr, plain.weight, plain.bias, B)
    ref.backward(g)
    assert xg.grad.dtype == layer.weight.grad.dtype == layer.bias.grad.dtype == torch.float32
    # the very bf16 products autograd computes, cast back as autograd casts: equal to the bit
    torch.testing.assert_close(xg.grad, xr.grad, rtol=0, atol=0)
    torch.testing.assert_close(layer.weight.grad, plain.weight.grad, rtol=0, atol=0)
    torch.testing.assert_close(layer.bias.grad, plain.bias.grad, rtol=0, atol=0)
    if rule != "bp":  # the check can fail: B's input gradient is not W's
        xw = x.clone().requires_grad_(True)
        with _autocast():
            wout = plain(xw)
        wout.backward(g)
        assert not torch.allclose(xw.grad, xg.grad, rtol=0.1)


@pytest.mark.parametrize("rule", ["fa", "dfa"])
@pytest.mark.parametrize("forward_bf16", [False, True])
def test_backward_runs_in_the_forwards_autocast_state(rule: str, forward_bf16: bool) -> None:
    """A backward called inside (or outside) an autocast block gives what the forward's state
    gives: an fp32 forward keeps an fp32 backward, whatever block loss.backward() sits in."""
    torch.manual_seed(8)
    base = convert(_small_net(), rule, seed=2)
    x, y = _data(4)
    grads = []
    for backward_bf16 in (False, True):
        net = copy.deepcopy(base)
        with _autocast(forward_bf16):
            loss = F.cross_entropy(net(x), y)
        with _autocast(backward_bf16):
            loss.backward()
        grads.append({n: p.grad for n, p in net.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=0, atol=0, msg=name)


def test_dfa_under_autocast_by_hand_and_state_stays_fp32() -> None:
    torch.manual_seed(2)
    mlp = convert(nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)), "dfa", seed=1)
    dtypes = {k: v.dtype for k, v in mlp.state_dict().items()}
    x = torch.randn(8, 6, requires_grad=True)
    g = torch.randn(8, 3)
    with _autocast():
        out = mlp(x)
    assert out.dtype == BF16
    (out.float() * g).sum().backward()  # e = g, rounded to the output's bf16
    B1 = mlp[0].feedback_state
    assert B1.dtype == torch.float32 and B1.shape == (3, 6)
    # the layer's input gradient is e B_1, computed in bf16 and returned in x's dtype
    expected = (g.to(BF16) @ B1.to(BF16)).float()
    assert x.grad.dtype == torch.float32
    torch.testing.assert_close(x.grad, expected, rtol=0, atol=0)
    # drawing B_l inside an autocast backward changes no state dtype (so no checksum or file)
    after = mlp.state_dict()
    assert {k: v.dtype for k, v in after.items() if k in dtypes} == dtypes
    assert all(after[k].dtype == torch.float32 for k in after if k.endswith("feedback_state"))


@pytest.mark.parametrize("rule", ALL_RULES)
def test_state_dict_dtypes_unchanged_by_an_autocast_step(rule: str) -> None:
    torch.manual_seed(3)
    net = convert(_small_net(), rule, seed=2)
    x, y = _data(4)
    _weight_grads(net, x, y, False)  # dfa: draw B_l in fp32 first, so both dicts hold it
    before = {k: (v.dtype, v.clone()) for k, v in net.state_dict().items()}
    _weight_grads(net, x, y, True)
    after = net.state_dict()
    assert {k: v.dtype for k, v in after.items()} == {k: d for k, (d, _) in before.items()}
    for k, (_, v) in before.items():
        if k.endswith("feedback_state"):
            assert torch.equal(after[k], v), k  # fixed feedback is not redrawn or re-rounded


def test_alignment_metrics_are_the_same_inside_autocast() -> None:
    torch.manual_seed(4)
    net = convert(_small_net(), "brsf", seed=2)
    x, y = _data(4)
    _weight_grads(net, x, y, True)
    net.eval()  # brsf keeps this step's draw
    outside = alignment_metrics(net)
    with _autocast():
        inside = alignment_metrics(net)
    assert inside == outside
    assert all(r.angle_deg is not None and 0 < r.angle_deg < 90 for r in outside)


@pytest.mark.parametrize("rule", ALL_RULES)
def test_a_bf16_model_without_autocast_trains_in_bf16(rule: str) -> None:
    torch.manual_seed(5)
    plain = _small_net().to(BF16)
    net = convert(copy.deepcopy(plain), rule, seed=2)
    assert all(t.dtype == BF16 for n, t in net.state_dict().items() if t.is_floating_point())
    x, y = _data(4)
    grads = _weight_grads(net, x.to(BF16), y, False)
    assert all(g.dtype == BF16 and g.isfinite().all() for g in grads.values())
    if rule == "bp":
        ref = _weight_grads(plain, x.to(BF16), y, False)
        for name in ref:
            torch.testing.assert_close(grads[name], ref[name], rtol=0, atol=0, msg=name)


# ------------------------------------------------------------------ bf16 tracks fp32


@pytest.mark.parametrize("rule", ALL_RULES)
def test_bf16_weight_gradients_within_cosine_099_of_fp32(rule: str) -> None:
    torch.manual_seed(6)
    base = convert(_small_net(), rule, seed=2)
    x, y = _data()
    # copies of one converted model: the same B (brsf: the same step counter; dfa: the same lazy B_l)
    g32 = _weight_grads(copy.deepcopy(base), x, y, False)
    g16 = _weight_grads(copy.deepcopy(base), x, y, True)
    for name in g32:
        assert g16[name].dtype == torch.float32
        if name.endswith("weight"):
            cos = F.cosine_similarity(g32[name].flatten(), g16[name].flatten(), dim=0)
            assert cos >= 0.99, (name, float(cos))


def _smooth_net() -> nn.Module:
    """_small_net with tanh and average pooling: no ReLU mask or max-pool choice that a rounding
    can flip, so two runs that differ by rounding only stay close for 20 steps (with ReLU and
    max pooling they drift apart in fp32 alone, from a bf16-sized change of the input)."""
    return _SmallNet(nn.Tanh, nn.AvgPool2d)


@pytest.mark.parametrize("rule", ALL_RULES)
def test_bf16_sgd_run_falls_like_fp32(rule: str) -> None:
    torch.manual_seed(7)
    base = convert(_smooth_net(), rule, seed=2)
    x, y = _data()

    def run(bf16: bool) -> list[float]:
        model = copy.deepcopy(base)
        opt = torch.optim.SGD(model.parameters(), lr=0.3)
        losses = []
        for _ in range(20):
            opt.zero_grad()
            with _autocast(bf16):
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses

    l32, l16 = run(False), run(True)
    start = l32[0]
    assert l32[-1] < 0.8 * start and l16[-1] < 0.8 * start, (start, l32[-1], l16[-1])  # both clearly learn
    torch.testing.assert_close(torch.tensor(l16), torch.tensor(l32), rtol=0, atol=0.02)  # and alike, step by step


# ------------------------------------------------------------------ torch.compile


def _sgd_losses(model: nn.Module, steps: int = 5) -> list[float]:
    g = torch.Generator().manual_seed(8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for _ in range(steps):
        x, y = torch.randn(8, 1, 12, 12, generator=g), torch.randint(0, 10, (8,), generator=g)
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


# fa / usf / bp / frsf / ifa compile as one graph (fullgraph=True); brsf's per-step draw (a seeded
# Generator) and dfa's layers (their backward reads e from the model's ErrorBox) run eagerly
# inside the compiled model, each a graph break. aot_eager traces the rules' autograd Functions
# (forward and backward) exactly as inductor does, without a C compiler, in seconds.
@pytest.mark.parametrize("rule", ALL_RULES)
def test_compiled_model_gives_the_eager_loss_trajectory(rule: str) -> None:
    from torch._dynamo.testing import CompileCounterWithBackend

    torch.manual_seed(9)
    base = convert(_small_net(), rule, seed=2)
    eager_model, compiled_model = copy.deepcopy(base), copy.deepcopy(base)
    eager = _sgd_losses(eager_model)
    torch._dynamo.reset()  # a fresh cache: no earlier test's frames, no silent fallback to eager
    counter = CompileCounterWithBackend("aot_eager")
    whole = rule not in ("brsf", "dfa")
    try:
        compiled = _sgd_losses(torch.compile(compiled_model, backend=counter, fullgraph=whole))
    finally:
        torch._dynamo.reset()
    assert counter.frame_count >= 1 and counter.op_count > 0  # something was compiled
    if whole:
        assert counter.frame_count == 1  # one graph, compiled once (no recompile), reused 5 times
    torch.testing.assert_close(torch.tensor(compiled), torch.tensor(eager), rtol=0, atol=1e-5)
    for (name, p), q in zip(compiled_model.named_parameters(), eager_model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-5, msg=name)
    # the rule's state moved as in eager (brsf: five steps counted)
    for (_, a), (_, b) in zip(feedback_layers(compiled_model), feedback_layers(eager_model)):
        assert int(a.feedback_step) == int(b.feedback_step)
        assert a.ran_forward  # the side effect alignment metrics read survives compilation


# ------------------------------------------------------------------ the kept compute-dtype copy of a fixed B


@pytest.mark.parametrize("change", ["in_place", "load_state_dict", "new_buffer", "data", "data_twice"])
def test_kept_bf16_copy_of_a_fixed_B_follows_every_change_of_the_state(change: str) -> None:
    """fa's B is cast to bf16 once and kept; whatever changes the stored B, the next backward uses
    the new one (hand-computed g B in bf16), never the stale copy."""
    torch.manual_seed(10)
    layer = convert(nn.Sequential(nn.Linear(6, 4)), "fa", seed=3)[0]
    x, g = torch.randn(5, 6), torch.randn(5, 4)

    def input_grad() -> torch.Tensor:
        xg = x.clone().requires_grad_(True)
        with _autocast():
            out = layer(xg)
        out.backward(g.to(out.dtype))
        return xg.grad

    first = input_grad()
    torch.testing.assert_close(first, (g.to(BF16) @ layer.feedback_state.to(BF16)).float(), rtol=0, atol=0)
    torch.testing.assert_close(input_grad(), first, rtol=0, atol=0)  # the kept copy: same numbers
    new_b = torch.randn(4, 6)
    if change == "in_place":
        with torch.no_grad():
            layer.feedback_state.copy_(new_b)
    elif change == "load_state_dict":
        layer.load_state_dict({**layer.state_dict(), "feedback_state": new_b})
    elif change == "new_buffer":
        layer.feedback_state = new_b.clone()
    elif change == "data":  # keeps the buffer's version counter: only its storage changes
        layer.feedback_state.data = new_b.clone()
    else:  # two swaps between steps: the second storage could take the first's freed address
        layer.feedback_state.data = torch.zeros(4, 6)
        layer.feedback_state.data = new_b.clone()
    after = input_grad()
    torch.testing.assert_close(after, (g.to(BF16) @ new_b.to(BF16)).float(), rtol=0, atol=0)
    assert not torch.equal(after, first)


@pytest.mark.parametrize("rule", ["fa", "usf"])
def test_compiled_model_under_bf16_autocast_is_one_graph_with_the_eager_losses(rule: str) -> None:
    """The engine's autocast questions (compute dtype in forward, the kept bf16 B) traced by dynamo:
    one graph, no recompile, the eager bf16 losses step for step."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch.manual_seed(11)
    base = convert(_small_net(), rule, seed=2)

    def losses(model: nn.Module) -> list[float]:
        g = torch.Generator().manual_seed(12)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        out = []
        for _ in range(4):
            x, y = torch.randn(8, 1, 12, 12, generator=g), torch.randint(0, 10, (8,), generator=g)
            opt.zero_grad()
            with _autocast():
                loss = F.cross_entropy(model(x).float(), y)
            loss.backward()
            opt.step()
            out.append(loss.item())
        return out

    eager = losses(copy.deepcopy(base))
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    try:
        compiled = losses(torch.compile(copy.deepcopy(base), backend=counter, fullgraph=True))
    finally:
        torch._dynamo.reset()
    assert counter.frame_count == 1
    torch.testing.assert_close(torch.tensor(compiled), torch.tensor(eager), rtol=0, atol=1e-5)
