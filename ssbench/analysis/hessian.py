"""Curvature of the loss w.r.t. the forward parameters: exact Hessian-vector products and what
is built on them (Hutchinson trace, power iteration, Lanczos, stochastic Lanczos quadrature, 2-D
loss surfaces along the top eigenvectors).

Everything goes through one :class:`HessianOperator`: a symmetric linear map ``v -> H v`` on the
flattened parameters, computed by double backward (``torch.autograd.grad`` with
``create_graph=True``), i.e. exact autograd, never a finite difference. For a rule-converted model
the products run inside :func:`ssbench.rules.exact_gradients`: the Hessian of the *forward
function* (the rule's backward is a pseudo-gradient and has no Hessian).

The loss is ``sum_b loss_fn(model(x_b), y_b, reduction="sum") / n`` over a fixed list of batches
(the mean over n fixed examples) with the model in **eval mode**: BatchNorm uses its running
statistics and dropout is off, so the loss is a deterministic function of the weights and H is its
exact Hessian. Vectors live in float64 (Lanczos recurrences, probes); products are computed in the
parameters' dtype.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LossTerms = Callable[[], Iterable[Tensor]]
"""Yields scalar tensors whose sum is the loss (one per batch, so memory stays one batch's)."""

# Lanczos keeps its basis in float64 while it fits this many numbers (512 MiB), else in the params' dtype.
_FLOAT64_BASIS_LIMIT = 2**26


class HessianOperator:
    """v -> H v for the Hessian H of a scalar loss w.r.t. ``params`` (flat vectors of length ``dim``)."""

    def __init__(
        self,
        terms: LossTerms,
        params: Sequence[Tensor],
        context: Callable[[], AbstractContextManager[object]] = nullcontext,
    ) -> None:
        self.params = [p for p in params]
        if not self.params:
            raise ValueError("HessianOperator needs at least one parameter")
        self.terms = terms
        self.context = context
        self.shapes = [p.shape for p in self.params]
        self.sizes = [p.numel() for p in self.params]
        self.dim = sum(self.sizes)
        self.dtype = self.params[0].dtype
        self.device = self.params[0].device
        self.products = 0  # HVPs computed (cost accounting)
        self.on_product: Callable[[], None] | None = None  # progress hook, called after every HVP

    # -- flat <-> per-parameter -------------------------------------------------------------
    def split(self, v: Tensor) -> list[Tensor]:
        return [c.view(s).to(p.dtype) for c, s, p in zip(v.to(self.device).split(self.sizes), self.shapes, self.params)]

    def flatten(self, tensors: Sequence[Tensor | None]) -> Tensor:
        return torch.cat([
            (torch.zeros(n, dtype=torch.float64, device=self.device) if t is None else t.reshape(-1).double())
            for t, n in zip(tensors, self.sizes)
        ])

    # -- the products ---------------------------------------------------------------------------
    def hvp(self, v: Tensor) -> Tensor:
        """H v (float64, flat) by double backward over every loss term."""
        vs = self.split(v)
        out = torch.zeros(self.dim, dtype=torch.float64, device=self.device)
        with self.context():
            for term in self.terms():
                grads = torch.autograd.grad(term, self.params, create_graph=True, allow_unused=True)
                dot = sum(((g * vi).sum() for g, vi in zip(grads, vs) if g is not None and g.requires_grad),
                          start=torch.zeros((), dtype=self.dtype, device=self.device))
                if not dot.requires_grad:  # the loss is linear in every parameter: H = 0 for this term
                    continue
                hv = torch.autograd.grad(dot, self.params, allow_unused=True)
                out += self.flatten(hv)
        self.products += 1
        if self.on_product is not None:
            self.on_product()
        return out

    def gradient(self) -> Tensor:
        out = torch.zeros(self.dim, dtype=torch.float64, device=self.device)
        with self.context():
            for term in self.terms():
                out += self.flatten(torch.autograd.grad(term, self.params, allow_unused=True))
        return out

    def loss(self) -> float:
        with torch.no_grad(), self.context():
            return float(sum(float(t) for t in self.terms()))

    def dense(self) -> Tensor:
        """The full n x n Hessian, column by column (n HVPs; small problems and tests only)."""
        eye = torch.eye(self.dim, dtype=torch.float64, device=self.device)
        return torch.stack([self.hvp(eye[i]) for i in range(self.dim)], dim=1)

    # -- moving the parameters ------------------------------------------------------------------
    @contextmanager
    def displaced(self) -> Iterator[Callable[[Tensor], None]]:
        """Yields ``move(delta)``: params := original + delta. The originals are copied back
        bit for bit on exit (a copy, not a subtraction, so no rounding is left behind)."""
        saved = [p.detach().clone() for p in self.params]

        def move(delta: Tensor) -> None:
            with torch.no_grad():
                for p, s, d in zip(self.params, saved, self.split(delta)):
                    p.copy_(s + d)

        try:
            yield move
        finally:
            with torch.no_grad():
                for p, s in zip(self.params, saved):
                    p.copy_(s)


# -- building the operator for a model ------------------------------------------------------------

@contextmanager
def _eval_exact(model: nn.Module) -> Iterator[None]:
    """Eval mode + true gradients for the duration; the previous train/eval flags are restored."""
    from ssbench.rules import exact_gradients

    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with exact_gradients(model):
            yield
    finally:
        for m, flag in flags:
            m.training = flag


def model_hessian(
    model: nn.Module,
    batches: Sequence[tuple[Tensor, Tensor]],
    *,
    loss_fn: Callable[..., Tensor] = F.cross_entropy,
    params: Sequence[Tensor] | None = None,
) -> HessianOperator:
    """The Hessian of the mean loss over ``batches`` w.r.t. ``params`` (default: every parameter that
    requires grad, i.e. forward weights, biases and BatchNorm affine terms; rule state are buffers).

    ``loss_fn(logits, y, reduction="sum")`` must support ``reduction``. The model runs in eval mode
    inside ``exact_gradients`` (see the module docstring)."""
    batches = list(batches)
    n = sum(len(y) for _, y in batches)
    if n == 0:
        raise ValueError("model_hessian needs at least one example")
    chosen = [p for p in model.parameters() if p.requires_grad] if params is None else list(params)

    def terms() -> Iterator[Tensor]:
        for x, y in batches:
            yield loss_fn(model(x), y, reduction="sum") / n

    return HessianOperator(terms, chosen, context=lambda: _eval_exact(model))


# -- trace ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TraceEstimate:
    mean: float
    stderr: float  # standard error of the mean over probes (0 for the full basis)
    samples: tuple[float, ...]


def rademacher(dim: int, generator: torch.Generator) -> Tensor:
    return torch.randint(0, 2, (dim,), generator=generator, dtype=torch.int64).double().mul_(2).sub_(1)


def hutchinson_trace(op: HessianOperator, probes: int = 100, *, seed: int = 0, full_basis: bool = False) -> TraceEstimate:
    """tr H ~ mean_i v_i^T H v_i with Rademacher v_i (unbiased; variance 2 sum_{i!=j} H_ij^2).

    ``full_basis=True`` uses the unit vectors e_1..e_n instead: the exact trace from n products."""
    if full_basis:
        eye = torch.zeros(op.dim, dtype=torch.float64)
        total = 0.0
        for i in range(op.dim):
            eye.zero_()
            eye[i] = 1.0
            total += float(op.hvp(eye)[i])
        return TraceEstimate(total, 0.0, (total,))
    if probes < 2:
        raise ValueError("hutchinson_trace needs at least 2 probes for a standard error")
    g = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(probes):
        v = rademacher(op.dim, g).to(op.device)
        samples.append(float(v @ op.hvp(v)))
    s = torch.tensor(samples, dtype=torch.float64)
    return TraceEstimate(float(s.mean()), float(s.std(unbiased=True) / math.sqrt(probes)), tuple(samples))


# -- top eigenvalues ------------------------------------------------------------------------------

@dataclass(frozen=True)
class EigenEstimate:
    value: float
    vector: Tensor  # unit norm, float64, flat
    iterations: int
    converged: bool


def _unit_start(op: HessianOperator, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(op.dim, generator=g, dtype=torch.float64).to(op.device)
    return v / v.norm()


def power_iteration(op: HessianOperator, iters: int = 50, *, tol: float = 1e-8, seed: int = 0) -> EigenEstimate:
    """The eigenvalue of largest *magnitude* (the Rayleigh quotient of the iterate).

    Stops when the relative change of the Rayleigh quotient falls below ``tol``. Converges at rate
    |lambda_2 / lambda_1| per step; Lanczos (:func:`lanczos_top`) needs far fewer products."""
    v = _unit_start(op, seed)
    value, converged, it = 0.0, False, 0
    for it in range(1, iters + 1):
        hv = op.hvp(v)
        new = float(v @ hv)
        norm = hv.norm()
        if norm == 0:
            return EigenEstimate(0.0, v, it, True)
        v = hv / norm
        if it > 1 and abs(new - value) <= tol * max(abs(new), 1e-30):
            value, converged = new, True
            break
        value = new
    return EigenEstimate(value, v, it, converged)


@dataclass(frozen=True)
class LanczosResult:
    alpha: Tensor  # diagonal of the tridiagonal T (m)
    beta: Tensor  # off-diagonal (m - 1)
    basis: Tensor | None  # m x n orthonormal Lanczos vectors (None when not kept)

    def tridiagonal(self) -> Tensor:
        m = len(self.alpha)
        t = torch.diag(self.alpha)
        if m > 1:
            t += torch.diag(self.beta, 1) + torch.diag(self.beta, -1)
        return t

    def ritz(self) -> tuple[Tensor, Tensor]:
        """Ritz values (ascending) and the eigenvectors of T (columns)."""
        return torch.linalg.eigh(self.tridiagonal())


def lanczos(
    op: HessianOperator, iters: int, *, v0: Tensor | None = None, seed: int = 0, keep_basis: bool = True
) -> LanczosResult:
    """m = min(iters, n) steps of Lanczos with full reorthogonalisation (Gram-Schmidt twice against
    every previous vector), so Ritz values carry no spurious copies. Stops early when the Krylov
    space is invariant (beta ~ 0): then the Ritz values are exact eigenvalues."""
    m = min(iters, op.dim)
    store_dtype = torch.float64 if op.dim * m <= _FLOAT64_BASIS_LIMIT else op.dtype
    q = _unit_start(op, seed) if v0 is None else (v0.double().to(op.device) / v0.norm())
    basis = torch.zeros(m, op.dim, dtype=store_dtype, device=op.device)
    alphas: list[float] = []
    betas: list[float] = []
    scale = 0.0
    for j in range(m):
        basis[j] = q.to(store_dtype)
        w = op.hvp(q)
        a = float(q @ w)
        alphas.append(a)
        prev = basis[: j + 1].double() if store_dtype != torch.float64 else basis[: j + 1]
        for _ in range(2):
            w = w - prev.t() @ (prev @ w)
        b = float(w.norm())
        scale = max(scale, abs(a), b)
        if j == m - 1 or b <= 1e-12 * max(scale, 1e-300):
            break
        betas.append(b)
        q = w / b
    k = len(alphas)
    return LanczosResult(
        torch.tensor(alphas, dtype=torch.float64),
        torch.tensor(betas[: k - 1], dtype=torch.float64),
        basis[:k] if keep_basis else None,
    )


@dataclass(frozen=True)
class TopEigen:
    values: tuple[float, ...]  # descending
    vectors: Tensor  # k x n, unit rows (Ritz vectors), float64
    iterations: int


def lanczos_top(op: HessianOperator, k: int = 1, iters: int = 50, *, seed: int = 0) -> TopEigen:
    """The k algebraically largest eigenvalues (Ritz values) and their Ritz vectors."""
    res = lanczos(op, iters, seed=seed)
    theta, s = res.ritz()
    k = min(k, len(theta))
    order = torch.argsort(theta, descending=True)[:k]
    basis = res.basis.double()  # type: ignore[union-attr]
    vecs = (s[:, order].t().to(basis.device) @ basis)
    vecs = vecs / vecs.norm(dim=1, keepdim=True)
    return TopEigen(tuple(float(theta[i]) for i in order), vecs, len(res.alpha))


# -- spectral density -----------------------------------------------------------------------------

@dataclass(frozen=True)
class SpectralDensity:
    """Eigenvalue density of H as a quadrature rule: nodes theta_k with weights w_k (sum 1).

    For any f, (1/n) tr f(H) ~ sum_k w_k f(theta_k)."""

    nodes: tuple[float, ...]
    weights: tuple[float, ...]

    def mean(self) -> float:
        return float(sum(t * w for t, w in zip(self.nodes, self.weights)))

    def smoothed(self, grid: Tensor | None = None, *, sigma: float | None = None, points: int = 512) -> tuple[Tensor, Tensor]:
        """(grid, density): the nodes convolved with a Gaussian of width sigma (default: the node
        range / 200). The default grid extends 5 sigma beyond the extreme nodes, so the density
        integrates to 1 on it up to trapezoid error."""
        nodes = torch.tensor(self.nodes, dtype=torch.float64)
        weights = torch.tensor(self.weights, dtype=torch.float64)
        lo, hi = float(nodes.min()), float(nodes.max())
        if sigma is None:
            sigma = max(hi - lo, abs(hi), 1e-12) / 200
        if grid is None:
            grid = torch.linspace(lo - 5 * sigma, hi + 5 * sigma, points, dtype=torch.float64)
        z = (grid.double()[:, None] - nodes[None, :]) / sigma
        dens = (weights[None, :] * torch.exp(-0.5 * z * z)).sum(1) / (sigma * math.sqrt(2 * math.pi))
        return grid.double(), dens


def slq_density(op: HessianOperator, probes: int = 4, iters: int = 50, *, seed: int = 0) -> SpectralDensity:
    """Stochastic Lanczos quadrature (Ubaru, Chen & Saad 2017; Ghorbani et al. 2019).

    For each Rademacher probe v (normalised), m Lanczos steps from v give T = S diag(theta) S^T;
    the Gauss quadrature nodes are theta, the weights the squared first components of S, averaged
    over probes. The density's mean sum w theta equals mean_v v^T H v / n: the Hutchinson trace
    estimate of the same probes over n."""
    g = torch.Generator().manual_seed(seed)
    nodes: list[float] = []
    weights: list[float] = []
    for _ in range(probes):
        v = rademacher(op.dim, g)
        res = lanczos(op, iters, v0=v, keep_basis=False)
        theta, s = res.ritz()
        tau = s[0, :] ** 2
        nodes.extend(float(t) for t in theta)
        weights.extend(float(t) / probes for t in tau)
    return SpectralDensity(tuple(nodes), tuple(weights))


# -- loss surface ---------------------------------------------------------------------------------

def loss_surface(
    op: HessianOperator, d1: Tensor, d2: Tensor, alphas: Sequence[float], betas: Sequence[float],
    *, on_point: Callable[[], None] | None = None,
) -> Tensor:
    """L(w0 + a d1 + b d2) on the grid (len(alphas) x len(betas)), float64.

    The parameters are restored exactly (bitwise) afterwards, also on error."""
    out = torch.zeros(len(alphas), len(betas), dtype=torch.float64)
    d1, d2 = d1.double().to(op.device), d2.double().to(op.device)
    with op.displaced() as move:
        for i, a in enumerate(alphas):
            for j, b in enumerate(betas):
                move(a * d1 + b * d2)
                out[i, j] = op.loss()
                if on_point is not None:
                    on_point()
    return out


def surface_grid(points: int, radius: float) -> list[float]:
    return [float(v) for v in torch.linspace(-radius, radius, points, dtype=torch.float64)]
