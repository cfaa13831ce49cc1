"""SDHA (Lu et al., "A Smart Adversarial Attack on Deep Hashing Based Image Retrieval")."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ssbench.attacks.base import Attack, register
from ssbench.attacks.hashing import alpha_schedule, clean_codes, code_scale, keep_best, project, smooth_hamming
from ssbench.retrieval.metrics import binarize, hamming_distance, relevance
from ssbench.retrieval.scoring import Reference


@register
class SDHA(Attack):
    """SDHA: away from the relevant items' codes with a smooth Hamming surrogate and AP-oriented weights, Adam."""

    name = "sdha"
    suite = "hashing"
    default_steps = 100
    uses_reference = True
    defaults: dict[str, Any] = {"lr": 0.01, "sigma": 5.0, "z": 0.5, "weight": 25.0, "alpha_start": 0.1, "alpha_end": 1.0,
                                "max_relevant": 512}

    def _relevant_sets(self, b: Tensor, y: Tensor, reference: Reference | None) -> tuple[Tensor, Tensor]:
        """(codes R (B, M, K), mask (B, M)): up to ``max_relevant`` relevant reference codes per example
        (the nearest ones to the clean code, which carry the AP weight); the clean code where none."""
        if reference is None:
            return b[:, None, :], torch.ones(len(b), 1, dtype=torch.bool, device=b.device)
        ref = reference.codes.to(b.device)
        rel = relevance(y.to(b.device), reference.labels.to(b.device))
        m = min(int(self.options["max_relevant"]), ref.shape[0])
        d = hamming_distance(b, ref).masked_fill(~rel, float("inf"))
        dist, idx = torch.sort(d, dim=1, stable=True)
        idx, mask = idx[:, :m], torch.isfinite(dist[:, :m])
        codes = ref[idx]  # (B, m, K)
        none = ~mask.any(1)
        codes[none, 0] = b[none]
        mask[none, 0] = True
        return codes, mask

    def _perturb(self, model, x, y, eps, reference=None):  # noqa: ANN001, ANN202
        o = self.options
        b = clean_codes(model, x)
        k = b.shape[1]
        codes, mask = self._relevant_sets(b, y, reference)
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
                best_x, best_s = keep_best(best_x, best_s, x_adv.detach(), score)
            mse = F.mse_loss(x_adv, x)
            loss = mse - (o["weight"] / k) * surrogate.mean()
            loss.backward()
            opt.step()
            with torch.no_grad():
                x_adv.copy_(project(x_adv, x, eps))
        with torch.no_grad():
            _, score = objective(model(x_adv))
            best_x, _ = keep_best(best_x, best_s, x_adv.detach(), score)
        return project(best_x, x, eps)
