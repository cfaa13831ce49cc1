"""Angle between a rule's weight update and the true gradient, against a hand computation."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssbench.analysis.gradient_alignment import gradient_alignment
from ssbench.rules import convert


pytestmark = pytest.mark.usefixtures("one_thread")


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 4)).double()


def _batch(seed: int = 0, n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 10, generator=g, dtype=torch.float64), torch.randint(0, 4, (n,), generator=g)


def _angle(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten(), b.flatten()
    cos = float(a @ b / (a.norm() * b.norm()))
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


def test_bp_is_zero_degrees():
    model = convert(_net(), "bp")
    x, y = _batch()
    rows = gradient_alignment(model, x, y)
    assert [name for name, _ in rows] == ["0", "2"]
    assert all(angle < 1e-5 for _, angle in rows)


def test_unconverted_model_is_zero_degrees():
    x, y = _batch()
    rows = gradient_alignment(_net(), x, y)
    assert len(rows) == 2 and all(angle < 1e-5 for _, angle in rows)


def test_fa_matches_a_hand_computed_feedback_gradient():
    plain = _net(1)
    model = convert(copy.deepcopy(plain), "fa", seed=3)
    x, y = _batch(1)
    w1, b1, w2, b2 = (p.detach() for p in plain.parameters())
    a = x @ w1.t() + b1
    h = a.clamp_min(0)
    logits = h @ w2.t() + b2
    e = (logits.softmax(1) - F.one_hot(y, 4).double()) / len(y)  # dL/dlogits of the mean cross-entropy
    feedback = model[2].feedback_state  # B of the output layer: its shape is W2's
    assert feedback.shape == w2.shape and not torch.allclose(feedback, w2)
    relu_prime = (a > 0).double()
    delta_true = (e @ w2) * relu_prime
    delta_fa = (e @ feedback) * relu_prime
    grad_true, grad_fa = delta_true.t() @ x, delta_fa.t() @ x
    expected = _angle(grad_fa, grad_true)
    rows = dict(gradient_alignment(model, x, y))
    assert rows["0"] == pytest.approx(expected, abs=1e-6)
    assert expected > 20  # a real misalignment, not a trivial pass
    assert rows["2"] < 1e-5  # the output layer sees the true error under every rule


def test_dfa_output_layer_is_exact_and_hidden_is_not():
    model = convert(nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).double(), "dfa", seed=0)
    x, y = _batch(2)
    rows = dict(gradient_alignment(model, x, y))
    assert rows["4"] < 1e-5
    assert rows["0"] > 1 and rows["2"] > 1


def test_train_mode_leaves_no_trace():
    """Batch statistics as in training, but BatchNorm running stats, brsf's step counter, the
    train/eval flags and .grad fields are all as before."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4)).double()
    model = convert(net, "brsf", seed=0).train()
    x, y = _batch(3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = gradient_alignment(model, x, y, mode="train")
    assert len(rows) == 2 and all(0 <= a <= 180 for _, a in rows)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    gradient_alignment(model, x, y)
    assert not model.training
