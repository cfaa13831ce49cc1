"""Hessian routines against closed forms (quadratic loss) and torch.autograd.functional.hessian."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ssbench.analysis.hessian import (
    HessianOperator,
    hutchinson_trace,
    lanczos,
    lanczos_top,
    loss_surface,
    model_hessian,
    power_iteration,
    rademacher,
    slq_density,
)
from ssbench.rules import convert
from ssbench.specs import RULE_NAMES


pytestmark = pytest.mark.usefixtures("one_thread")

N = 24
EIGS = torch.tensor([9.0, 5.5, 3.0] + [-1.0 + 3.0 * i / (N - 4) for i in range(N - 3)], dtype=torch.float64)


def _quadratic(diagonal: bool = False, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, HessianOperator]:
    g = torch.Generator().manual_seed(seed)
    if diagonal:
        a = torch.diag(EIGS)
    else:
        q, _ = torch.linalg.qr(torch.randn(N, N, generator=g, dtype=torch.float64))
        a = q @ torch.diag(EIGS) @ q.t()
        a = 0.5 * (a + a.t())
    w = torch.randn(N, generator=g, dtype=torch.float64).requires_grad_(True)
    op = HessianOperator(lambda: [0.5 * w @ a @ w], [w])
    return a, w, op


def test_hvp_of_quadratic_is_a_times_v():
    a, _, op = _quadratic()
    assert torch.allclose(op.dense(), a, atol=1e-12)
    v = torch.randn(N, dtype=torch.float64)
    assert torch.allclose(op.hvp(v), a @ v, atol=1e-12)


def test_full_basis_trace_is_exact():
    a, _, op = _quadratic()
    est = hutchinson_trace(op, full_basis=True)
    assert est.mean == pytest.approx(float(torch.trace(a)), abs=1e-10)
    assert est.stderr == 0.0


def test_hutchinson_within_three_standard_errors_and_variance_matches_theory():
    a, _, op = _quadratic()
    est = hutchinson_trace(op, probes=300, seed=3)
    exact = float(torch.trace(a))
    assert abs(est.mean - exact) <= 3 * est.stderr
    # Rademacher: Var(v^T A v) = 2 sum_{i != j} A_ij^2
    off = a - torch.diag(torch.diag(a))
    theory_se = math.sqrt(2 * float((off**2).sum()) / 300)
    assert est.stderr == pytest.approx(theory_se, rel=0.35)
    # each sample is an independent quadratic form v^T A v with a +-1 vector
    g = torch.Generator().manual_seed(3)
    v = rademacher(N, g)
    assert est.samples[0] == pytest.approx(float(v @ a @ v), abs=1e-10)


def test_hutchinson_is_exact_for_a_diagonal_hessian():
    a, _, op = _quadratic(diagonal=True)
    est = hutchinson_trace(op, probes=5)
    assert all(s == pytest.approx(float(torch.trace(a)), abs=1e-10) for s in est.samples)


def test_power_iteration_top_eigenvalue():
    a, _, op = _quadratic()
    est = power_iteration(op, iters=500, tol=1e-14)
    assert est.value == pytest.approx(float(EIGS.max()), rel=1e-6)
    assert torch.allclose(a @ est.vector, est.value * est.vector, atol=1e-5)


def test_lanczos_top_k_and_ritz_vectors():
    a, _, op = _quadratic()
    top = lanczos_top(op, k=3, iters=N)
    expected = torch.sort(torch.linalg.eigvalsh(a), descending=True).values[:3]
    for got, want in zip(top.values, expected.tolist()):
        assert got == pytest.approx(want, rel=1e-6)
    for lam, v in zip(top.values, top.vectors):
        assert torch.allclose(a @ v, lam * v, atol=1e-8)
    # fewer steps than dimensions still find the well-separated top eigenvalue
    assert lanczos_top(op, k=1, iters=16).values[0] == pytest.approx(9.0, rel=1e-6)


def test_lanczos_basis_is_orthonormal_with_reorthogonalisation():
    _, _, op = _quadratic()
    res = lanczos(op, N)
    q = res.basis
    assert torch.allclose(q @ q.t(), torch.eye(len(q), dtype=torch.float64), atol=1e-10)
    # Q T Q^T reproduces the operator on the full Krylov space
    t = res.tridiagonal()
    assert torch.allclose(q.t() @ t @ q, op.dense(), atol=1e-8)


def test_slq_density_integrates_to_one_and_mean_is_trace_over_n():
    a, _, op = _quadratic()
    probes = 30
    dens = slq_density(op, probes=probes, iters=N, seed=1)
    assert sum(dens.weights) == pytest.approx(1.0, abs=1e-12)
    # full Lanczos: every node is an eigenvalue of A
    eig = torch.linalg.eigvalsh(a)
    assert all(float((eig - t).abs().min()) < 1e-8 for t in dens.nodes)
    # the mean is exactly the Hutchinson estimate of the same probes over n ...
    g = torch.Generator().manual_seed(1)
    quad = [float((v := rademacher(N, g)) @ a @ v) for _ in range(probes)]
    assert dens.mean() == pytest.approx(sum(quad) / probes / N, abs=1e-10)
    # ... so trace / n within its standard error
    se = torch.tensor(quad).std().item() / math.sqrt(probes) / N
    assert abs(dens.mean() - float(torch.trace(a)) / N) <= 3 * se
    grid, values = dens.smoothed(points=4000)
    assert float(torch.trapezoid(values, grid)) == pytest.approx(1.0, abs=1e-3)
    assert float(torch.trapezoid(values * grid, grid)) == pytest.approx(dens.mean(), abs=1e-3)


def test_slq_mean_is_exact_for_diagonal_hessian():
    a, _, op = _quadratic(diagonal=True)
    dens = slq_density(op, probes=2, iters=10)
    assert dens.mean() == pytest.approx(float(torch.trace(a)) / N, abs=1e-10)


def test_loss_surface_matches_closed_form_and_restores_weights_bitwise():
    a, w, op = _quadratic()
    w0 = w.detach().clone()
    top = lanczos_top(op, k=2, iters=N)
    d1, d2 = top.vectors
    alphas, betas = [-0.5, 0.0, 0.25, 1.0], [-1.0, 0.0, 0.3]
    grid = loss_surface(op, d1, d2, alphas, betas)
    for i, al in enumerate(alphas):
        for j, be in enumerate(betas):
            p = w0 + al * d1 + be * d2
            assert float(grid[i, j]) == pytest.approx(float(0.5 * p @ a @ p), rel=1e-10, abs=1e-12)
    assert torch.equal(w.detach(), w0)


def test_loss_surface_restores_weights_on_error():
    _, w, op = _quadratic()
    w0 = w.detach().clone()
    calls = []

    def boom() -> None:
        calls.append(1)
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        loss_surface(op, torch.ones(N), torch.ones(N), [0.7], [0.3], on_point=boom)
    assert calls and torch.equal(w.detach(), w0)


# -- a small network against torch.autograd.functional.hessian ------------------------------------

def _tiny_net(seed: int = 0, bn: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(5, 6), nn.Tanh()]
    if bn:
        layers.insert(1, nn.BatchNorm1d(6))
    layers += [nn.Linear(6, 3)]
    return nn.Sequential(*layers).double()


def _data(seed: int = 0, n: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def _reference_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Plain autograd on the flattened parameters of an unconverted copy in eval mode."""
    ref = copy.deepcopy(model).eval()
    names = [n for n, _ in ref.named_parameters()]
    shapes = [p.shape for _, p in ref.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for _, p in ref.named_parameters()])

    def f(theta: torch.Tensor) -> torch.Tensor:
        params, i = {}, 0
        for n, s in zip(names, shapes):
            k = math.prod(s)
            params[n] = theta[i : i + k].view(s)
            i += k
        return F.cross_entropy(functional_call(ref, params, (x,)), y)

    return torch.autograd.functional.hessian(f, flat)


def test_small_net_hessian_matches_autograd_functional():
    model = _tiny_net()
    x, y = _data()
    ref = _reference_hessian(model, x, y)
    # two batches: the loss is the mean over all 20 examples
    op = model_hessian(model, [(x[:12], y[:12]), (x[12:], y[12:])])
    assert torch.allclose(op.dense(), ref, atol=1e-10)
    eig = torch.linalg.eigvalsh(ref)
    assert hutchinson_trace(op, full_basis=True).mean == pytest.approx(float(torch.trace(ref)), abs=1e-9)
    est = hutchinson_trace(op, probes=200, seed=0)
    assert abs(est.mean - float(torch.trace(ref))) <= 3 * est.stderr
    assert lanczos_top(op, k=1, iters=op.dim).values[0] == pytest.approx(float(eig.max()), rel=1e-6)
    biggest = float(eig[eig.abs().argmax()])
    assert power_iteration(op, iters=3000, tol=1e-15).value == pytest.approx(biggest, rel=1e-6)


@pytest.mark.parametrize("rule", RULE_NAMES)
def test_converted_model_uses_exact_gradients_and_eval_mode(rule: str):
    """A rule-converted model with BatchNorm: the Hessian is the forward function's (eval mode), and
    the model's train flag and rule state are untouched afterwards."""
    plain = _tiny_net(bn=True)
    x, y = _data(1)
    plain.train()
    plain(x)  # move the running statistics away from their init
    ref = _reference_hessian(plain, x, y)
    model = convert(copy.deepcopy(plain), rule, seed=0).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    op = model_hessian(model, [(x, y)])
    assert torch.allclose(op.dense(), ref, atol=1e-10)
    assert model.training
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
