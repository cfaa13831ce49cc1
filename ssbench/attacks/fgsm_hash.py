"""FGSM on a hash code: one signed-gradient step away from the clean code."""
from __future__ import annotations

from typing import Any

import torch

from ssbench.attacks.base import Attack, register
from ssbench.attacks.hashing import clean_codes, code_agreement, project


@register
class FGSMHash(Attack):
    """FGSM-hash: one signed-gradient step away from the clean code (relaxed Hamming loss)."""

    name = "fgsm-hash"
    suite = "hashing"
    single_step = True
    # tanh(0.1 z): a trained hash head saturates tanh(z) in float32 (zero gradient); 0.1 keeps it alive
    defaults: dict[str, Any] = {"scale": 0.1}

    def _perturb(self, model, x, y, eps):  # noqa: ANN001, ANN202
        b = clean_codes(model, x)
        x_adv = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(code_agreement(model, x_adv, b, self.options["scale"]).sum(), x_adv)
        return project(x - eps * g.sign(), x, eps)
