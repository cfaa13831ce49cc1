"""HAG (Yang et al., "Adversarial Examples for Hamming Space Search"): flip the clean code's bits."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ssbench.attacks.base import Attack, register
from ssbench.attacks.hashing import alpha_schedule, clean_codes, code_scale, flipped_bits, keep_best, project
from ssbench.retrieval.metrics import binarize


@register
class HAG(Attack):
    """HAG: flip the bits of the clean code (masked, bit-balanced), SGD + momentum, tanh continuation."""

    name = "hag"
    suite = "hashing"
    default_steps = 100
    # lr is in units of eps per step on the mean-|g|-normalised gradient
    defaults: dict[str, Any] = {"lr": 0.1, "momentum": 0.9, "threshold": 0.5, "beta": 1.0, "alpha_start": 0.1, "alpha_end": 1.0}

    @staticmethod
    def loss(u: Tensor, b: Tensor, threshold: float, beta: float) -> Tensor:
        """Per example: (masked mean_k u_k b_k + 1)^2 + beta * (mean_k u_k)^2 (minimised)."""
        mask = ((u * b).detach() > -threshold).to(u.dtype)  # bits not yet flipped past -threshold
        corr = (mask * u * b).sum(1) / (mask.sum(1) + 1e-8)
        return (corr + 1).pow(2) + beta * u.mean(1).pow(2)

    def _perturb(self, model, x, y, eps):  # noqa: ANN001, ANN202
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
                best_x, best_s = keep_best(best_x, best_s, x_adv.detach(), score)
                g = g / g.flatten(1).abs().mean(1).clamp_min(1e-20).view((-1,) + (1,) * (x.dim() - 1))
                velocity = o["momentum"] * velocity + g
                x_adv = project(x_adv.detach() - o["lr"] * eps * velocity, x, eps)
        with torch.no_grad():
            score = flipped_bits(clean_codes(model, x_adv), b)
            best_x, _ = keep_best(best_x, best_s, x_adv, score)
        return project(best_x, x, eps)
