"""PGD on a hash code: projected signed-gradient steps away from the clean code, random start."""
from __future__ import annotations

from typing import Any

import torch

from ssbench.attacks.base import Attack, register
from ssbench.attacks.hashing import clean_codes, code_agreement, flipped_bits, keep_best, project


@register
class PGDHash(Attack):
    """PGD-hash: projected signed-gradient steps away from the clean code, random start."""

    name = "pgd-hash"
    suite = "hashing"
    default_steps = 100
    compared_with = "fgsm-hash"
    defaults: dict[str, Any] = {"scale": 0.1, "step_factor": 2.5, "random_start": True}

    def _perturb(self, model, x, y, eps):  # noqa: ANN001, ANN202
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
                best_x, best_s = keep_best(best_x, best_s, x_adv.detach(), score)
                x_adv = project(x_adv.detach() - step * g.sign(), x, eps)
        with torch.no_grad():
            score = flipped_bits(clean_codes(model, x_adv), b)
            best_x, _ = keep_best(best_x, best_s, x_adv, score)
        return project(best_x, x, eps)
