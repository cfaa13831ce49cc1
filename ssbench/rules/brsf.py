"""Batchwise random-magnitude sign-concordant feedback: B_t = |R_t| * sign(W) * rms(W).

R_t ~ N(0, 1) is redrawn once per training step from a private generator seeded by
(rule seed, layer index, step counter), so runs are reproducible and the global RNG is untouched.
The step counter is a buffer advanced by each training-mode forward that records a graph. In eval
mode the counter does not move: backward uses the draw of the last training step, fixed, so an
attacker in feedback mode sees one consistent pseudo-gradient (E|R|^2 = 1 keeps ||B|| ~ ||W||).
"""
from __future__ import annotations

from torch import Tensor

from ssbench.rules.base import RULES, Rule, draw_normal, layer_generator, rms


@RULES.register("brsf", help="batchwise random-magnitude sign feedback, |R_t| sign(W), redrawn per step")
class BatchRandomSignFeedback(Rule):
    name = "brsf"
    per_step = True

    def feedback(self, layer) -> Tensor:  # noqa: ANN001
        w = layer.weight.detach()
        gen = layer_generator(layer.feedback_seed, layer.feedback_index, int(layer.feedback_step))
        return draw_normal(w.shape, w, gen).abs() * w.sign() * rms(w)
