"""Attacks on deep hashing retrieval, written for ssbench (no library ships them).

Every gradient attack receives the *gradient module* (``ssbench.attacks.modes.gradient_source``:
the target through its rule backward, the target with exact gradients, or a BP surrogate). Codes
it optimises are that module's; retrieval quality is measured elsewhere with the target's codes.
All attacks are L-inf: after every step ``x_adv`` is projected on ``[x - eps, x + eps] cap [0, 1]``.
``eps = 0`` returns ``x`` unchanged without touching the model. The exact objectives are written
out in docs/retrieval.md.

* ``hag``  - Yang et al., "Adversarial Examples for Hamming Space Search" (HAG): push the relaxed
  code ``tanh(alpha z)`` of ``x_adv`` to the negation of the clean code ``b``, only on the bits not
  yet flipped, plus a bit-balance term; SGD with momentum; ``alpha`` grows (continuation).
* ``sdha`` - Lu et al., "A Smart Adversarial Attack on Deep Hashing Based Image Retrieval" (SDHA):
  maximise a dimension-wise smooth Hamming distance to the codes of the *relevant* items the
  attacker knows (the hash-training set), weighted AP-style (near relevant items weigh more), with
  an MSE perceptibility term; Adam; continuation.
* ``fgsm-hash`` / ``pgd-hash`` - FGSM / PGD (random start) minimising ``sum_k b_k tanh(s z_k)``,
  i.e. maximising the relaxed Hamming distance to the clean code.
* ``hsj-label`` - HopSkipJump (foolbox, L-inf, decision-based) on the *retrieval label*: the class
  of the nearest database item (ties by database index) or the majority of the top k.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssbench.registry import Registry
from ssbench.retrieval.heads import code_scale
from ssbench.retrieval.metrics import binarize, hamming_distance


def project(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)


def alpha_schedule(step: int, steps: int, start: float, end: float) -> float:
    """Geometric continuation ``start -> end`` over ``steps`` steps."""
    if steps <= 1:
        return end
    return start * (end / start) ** (step / (steps - 1))


@torch.no_grad()
def clean_codes(model: nn.Module, x: Tensor, batch_size: int = 512) -> Tensor:
    return torch.cat([binarize(model(x[i : i + batch_size])) for i in range(0, len(x), batch_size)])


@dataclass
class Knowledge:
    """What the attacker knows besides the image: codes (+-1, under the gradient module) of a labelled
    reference set and, per example of the batch, which of them are relevant (SDHA)."""

    ref_codes: Tensor | None = None  # (N, K)
    relevant: Tensor | None = None  # (B, N) bool


class HashAttack:
    name: ClassVar[str]
    uses_gradients: ClassVar[bool] = True
    minimum_norm: ClassVar[bool] = False
    default_steps: ClassVar[int | None] = None

    def __init__(self, *, steps: int | None = None, seed: int = 0, **options: Any) -> None:
        self.steps = steps if steps is not None else self.default_steps
        self.seed = seed
        self.options = {**self.defaults(), **options}

    def defaults(self) -> dict[str, Any]:
        return {}

    def params(self, eps: float) -> dict[str, Any]:
        p: dict[str, Any] = {"norm": "linf", "seed": self.seed, **self.options}
        if self.steps is not None:
            p["steps"] = self.steps
        return p

    def perturb(self, model: nn.Module, x: Tensor, eps: float, knowledge: Knowledge | None = None, *, call: int = 0) -> Tensor:
        if eps == 0:
            return x.detach().clone()
        flags = {n: m.training for n, m in model.named_modules()}
        model.eval()
        devices = [x.device] if x.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.seed * 1_000_003 + call)
                adv = self._perturb(model, x.detach(), float(eps), knowledge or Knowledge())
        finally:
            for n, m in model.named_modules():
                m.training = flags.get(n, m.training)
        return project(adv.detach(), x, eps)

    def _perturb(self, model: nn.Module, x: Tensor, eps: float, knowledge: Knowledge) -> Tensor:
        raise NotImplementedError


HASH_ATTACKS: Registry[type[HashAttack]] = Registry("hashing attack")


def register(cls: type[HashAttack]) -> type[HashAttack]:
    HASH_ATTACKS.register(cls.name, help=(cls.__doc__ or "").strip().split("\n")[0])(cls)
    return cls


def _keep_best(best_x: Tensor, best_s: Tensor, x_new: Tensor, s_new: Tensor) -> tuple[Tensor, Tensor]:
    better = s_new > best_s
    shape = (-1,) + (1,) * (x_new.dim() - 1)
    return torch.where(better.view(shape), x_new, best_x), torch.where(better, s_new, best_s)


@register
class HAG(HashAttack):
    """HAG: flip the bits of the clean code (masked, bit-balanced), SGD + momentum, tanh continuation."""

    name = "hag"
    default_steps = 100

    def defaults(self) -> dict[str, Any]:
        # lr is in units of eps per step on the mean-|g|-normalised gradient.
        return {"lr": 0.1, "momentum": 0.9, "threshold": 0.5, "beta": 1.0, "alpha_start": 0.1, "alpha_end": 1.0}

    @staticmethod
    def loss(u: Tensor, b: Tensor, threshold: float, beta: float) -> Tensor:
        """Per example: (masked mean_k u_k b_k + 1)^2 + beta * (mean_k u_k)^2 (minimised)."""
        mask = ((u * b).detach() > -threshold).to(u.dtype)  # bits not yet flipped past -threshold
        corr = (mask * u * b).sum(1) / (mask.sum(1) + 1e-8)
        return (corr + 1).pow(2) + beta * u.mean(1).pow(2)

    def _perturb(self, model, x, eps, knowledge):  # noqa: ANN001, ANN202
        o = self.options
        b = clean_codes(model, x)
        x_adv = x.clone()
        velocity = torch.zeros_like(x)
        best_x, best_s = x.clone(), torch.zeros(len(x), device=x.device)
        for t in range(self.steps):
            x_adv.requires_grad_(True)
            with code_scale(model, alpha_schedule(t, self.steps, o["alpha_start"], o["alpha_end"])):
                u = model(x_adv)
            loss = self.loss(u, b, o["threshold"], o["beta"]).sum()
            (g,) = torch.autograd.grad(loss, x_adv)
            with torch.no_grad():
                score = flipped_bits(binarize(u), b)  # flipped bits at this iterate
                best_x, best_s = _keep_best(best_x, best_s, x_adv.detach(), score)
                g = g / g.flatten(1).abs().mean(1).clamp_min(1e-20).view((-1,) + (1,) * (x.dim() - 1))
                velocity = o["momentum"] * velocity + g
                x_adv = project(x_adv.detach() - o["lr"] * eps * velocity, x, eps)
        with torch.no_grad():
            score = flipped_bits(clean_codes(model, x_adv), b)
            best_x, _ = _keep_best(best_x, best_s, x_adv, score)
        return best_x


def flipped_bits(codes: Tensor, b: Tensor) -> Tensor:
    """Per example Hamming distance between +-1 codes (B, K) and (B, K)."""
    return 0.5 * (b.shape[1] - (codes * b).sum(1))


def smooth_hamming(u: Tensor, r: Tensor, sigma: float) -> Tensor:
    """SDHA's dimension-wise surrogate of the Hamming distance between relaxed codes u (B, K) and
    +-1 codes r (B, M, K) -> (B, M):  sum_k [ |u_k - r_k|/2 * s(sigma u_k r_k) + 1 - s(sigma u_k r_k) ],
    s = sigmoid: ~0 on agreeing bits, ~1 on disagreeing ones."""
    s = torch.sigmoid(sigma * u[:, None, :] * r)
    return (0.5 * (u[:, None, :] - r).abs() * s + 1 - s).sum(-1)


@register
class SDHA(HashAttack):
    """SDHA: away from the relevant items' codes with a smooth Hamming surrogate and AP-oriented weights, Adam."""

    name = "sdha"
    default_steps = 100

    def defaults(self) -> dict[str, Any]:
        return {"lr": 0.01, "sigma": 5.0, "z": 0.5, "weight": 25.0, "alpha_start": 0.1, "alpha_end": 1.0, "max_relevant": 512}

    def _relevant_sets(self, b: Tensor, knowledge: Knowledge) -> tuple[Tensor, Tensor]:
        """(codes R (B, M, K), mask (B, M)): up to ``max_relevant`` relevant reference codes per example
        (the nearest ones to the clean code, which carry the AP weight); the clean code where none."""
        if knowledge.ref_codes is None or knowledge.relevant is None:
            return b[:, None, :], torch.ones(len(b), 1, dtype=torch.bool, device=b.device)
        ref = knowledge.ref_codes.to(b.device)
        rel = knowledge.relevant.to(b.device)
        m = min(int(self.options["max_relevant"]), ref.shape[0])
        d = hamming_distance(b, ref).masked_fill(~rel, float("inf"))
        dist, idx = torch.sort(d, dim=1, stable=True)
        idx, mask = idx[:, :m], torch.isfinite(dist[:, :m])
        codes = ref[idx]  # (B, m, K)
        none = ~mask.any(1)
        codes[none, 0] = b[none]
        mask[none, 0] = True
        return codes, mask

    def _perturb(self, model, x, eps, knowledge):  # noqa: ANN001, ANN202
        o = self.options
        b = clean_codes(model, x)
        k = b.shape[1]
        codes, mask = self._relevant_sets(b, knowledge)
        maskf = mask.to(x.dtype)
        x_adv = x.clone().requires_grad_(True)
        opt = torch.optim.Adam([x_adv], lr=o["lr"], betas=(0.9, 0.999))
        best_x, best_s = x.clone(), torch.zeros(len(x), device=x.device)

        def objective(u: Tensor) -> tuple[Tensor, Tensor]:
            d = smooth_hamming(u, codes, o["sigma"])  # (B, M)
            with torch.no_grad():
                ham = 0.5 * (k - (binarize(u)[:, None, :] * codes).sum(-1))
                w = (ham + 1).pow(-o["z"])  # AP-oriented: nearer relevant items weigh more
                score = (ham * maskf).sum(1) / maskf.sum(1)
            surrogate = (w * d * maskf).sum(1) / maskf.sum(1)
            return surrogate, score

        for t in range(self.steps):
            opt.zero_grad()
            with code_scale(model, alpha_schedule(t, self.steps, o["alpha_start"], o["alpha_end"])):
                u = model(x_adv)
            surrogate, score = objective(u)
            with torch.no_grad():
                best_x, best_s = _keep_best(best_x, best_s, x_adv.detach(), score)
            mse = F.mse_loss(x_adv, x)
            loss = mse - (o["weight"] / k) * surrogate.mean()
            loss.backward()
            opt.step()
            with torch.no_grad():
                x_adv.copy_(project(x_adv, x, eps))
        with torch.no_grad():
            _, score = objective(model(x_adv))
            best_x, _ = _keep_best(best_x, best_s, x_adv.detach(), score)
        return best_x


def code_agreement(model: nn.Module, x: Tensor, b: Tensor, scale: float) -> Tensor:
    """sum_k b_k tanh(scale * z_k) per example (lower = farther from the clean code)."""
    with code_scale(model, scale):
        return (model(x) * b).sum(1)


@register
class FGSMHash(HashAttack):
    """FGSM-hash: one signed-gradient step away from the clean code (relaxed Hamming loss)."""

    name = "fgsm-hash"
    default_steps = None

    def defaults(self) -> dict[str, Any]:
        # tanh(0.1 z): a trained hash head saturates tanh(z) in float32 (zero gradient); 0.1 keeps it alive.
        return {"scale": 0.1}

    def _perturb(self, model, x, eps, knowledge):  # noqa: ANN001, ANN202
        b = clean_codes(model, x)
        x_adv = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(code_agreement(model, x_adv, b, self.options["scale"]).sum(), x_adv)
        return x - eps * g.sign()


@register
class PGDHash(HashAttack):
    """PGD-hash: projected signed-gradient steps away from the clean code, random start."""

    name = "pgd-hash"
    default_steps = 100

    def defaults(self) -> dict[str, Any]:
        return {"scale": 0.1, "step_factor": 2.5, "random_start": True}

    def _perturb(self, model, x, eps, knowledge):  # noqa: ANN001, ANN202
        o = self.options
        b = clean_codes(model, x)
        step = o["step_factor"] * eps / self.steps
        x_adv = project(x + torch.empty_like(x).uniform_(-eps, eps), x, eps) if o["random_start"] else x.clone()
        best_x, best_s = x.clone(), torch.zeros(len(x), device=x.device)
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            agree = code_agreement(model, x_adv, b, o["scale"])
            (g,) = torch.autograd.grad(agree.sum(), x_adv)
            with torch.no_grad():
                score = flipped_bits(clean_codes(model, x_adv), b)
                best_x, best_s = _keep_best(best_x, best_s, x_adv.detach(), score)
                x_adv = project(x_adv.detach() - step * g.sign(), x, eps)
        with torch.no_grad():
            score = flipped_bits(clean_codes(model, x_adv), b)
            best_x, _ = _keep_best(best_x, best_s, x_adv, score)
        return best_x


# -- black-box: HopSkipJump on the retrieval label ------------------------------------------------

class RetrievalLabeler(nn.Module):
    """The retrieval system as a classifier: one-hot of the class of the nearest database item
    (``k=1``; ties -> lowest database index, as in the ranking) or the majority of the top ``k``
    (vote ties -> lowest class). Single-label databases only."""

    def __init__(self, model: nn.Module, db_codes: Tensor, db_labels: Tensor, num_classes: int, k: int = 1) -> None:
        super().__init__()
        if db_labels.dim() != 1:
            raise ValueError("the retrieval label needs single-label database labels")
        self.model = model
        self.register_buffer("db_codes", binarize(db_codes))
        self.register_buffer("db_labels", db_labels.long())
        self.num_classes, self.k = num_classes, k

    @torch.no_grad()
    def labels(self, x: Tensor) -> Tensor:
        d = hamming_distance(binarize(self.model(x)), self.db_codes)
        if self.k == 1:
            return self.db_labels[d.argmin(1)]  # first minimum = lowest database index
        top = torch.sort(d, dim=1, stable=True).indices[:, : self.k]
        votes = F.one_hot(self.db_labels[top], self.num_classes).sum(1)
        return votes.argmax(1)

    def forward(self, x: Tensor) -> Tensor:
        return F.one_hot(self.labels(x), self.num_classes).float()


@register
class HSJLabel(HashAttack):
    """HSJ-label: HopSkipJump (L-inf, decision-based) on the retrieval label; minimum-norm, query mode."""

    name = "hsj-label"
    uses_gradients = False
    minimum_norm = True
    default_steps = 20

    def defaults(self) -> dict[str, Any]:
        return {"k": 1, "chunk": 32}

    def min_distance(
        self, labeler: RetrievalLabeler, x: Tensor, y: Tensor, pool_x: Tensor, pool_y: Tensor, *, call: int = 0
    ) -> tuple[Tensor, Tensor]:
        """(adversarials, L-inf distance; inf where none found) against the true labels ``y``.
        Examples whose clean retrieval label is already wrong get distance 0."""
        from ssbench.attacks.hopskipjump import HopSkipJump

        atk = HopSkipJump(steps=self.steps, seed=self.seed)
        adv, dist = x.clone(), torch.full((len(x),), float("inf"), device=x.device)
        wrong = labeler.labels(x) != y
        dist[wrong] = 0.0
        todo = (~wrong).nonzero().flatten()
        chunk = int(self.options["chunk"])
        for j, s in enumerate(range(0, len(todo), chunk)):
            idx = todo[s : s + chunk]
            a, d = atk.min_distance(labeler, x[idx], y[idx], pool_x=pool_x, pool_y=pool_y, call=call * 10_007 + j)
            adv[idx], dist[idx] = a, d
        return adv, dist


def at_budget(x: Tensor, adv: Tensor, dist: Tensor, eps: float) -> Tensor:
    """Images a minimum-norm attack yields at budget eps: its adversarial where it needed <= eps,
    else the clean image."""
    ok = (dist <= eps + 1e-12).view((-1,) + (1,) * (x.dim() - 1))
    return torch.where(ok, adv, x)


GRADIENT_ATTACKS = ("hag", "sdha", "fgsm-hash", "pgd-hash")
ALL_ATTACKS = GRADIENT_ATTACKS + ("hsj-label",)

