"""Linear and Conv2d layers whose backward follows a learning rule.

`convert` swaps the class of existing nn.Linear / nn.Conv2d objects in place (no copy), so the
weight and bias Parameters, hooks and optimiser references stay the very same objects. The rule's
per-layer state lives in the `feedback_state` buffer and round-trips through `state_dict()`.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssbench.errors import SpecError
from ssbench.rules.base import Rule, layer_generator
from ssbench.rules.functions import DirectFeedback, ErrorBox, FeedbackConv2dFn, FeedbackLinearFn


class FeedbackLayer(nn.Module):
    """Mixin holding the rule, its state and the exact-gradient switch (see `exact_gradients`)."""

    rule: Rule
    feedback_seed: int
    feedback_index: int
    feedback_skip: tuple[str, ...]  # the skip patterns of the conversion (persisted in rule_config)
    exact: bool
    ran_forward: bool  # set by the first forward: layers that never run are invisible to the rule
    error_box: ErrorBox | None
    feedback_state: Tensor | None
    feedback_step: Tensor

    def attach_rule(
        self, rule: Rule, seed: int, index: int, error_box: ErrorBox | None, skip: tuple[str, ...] = ()
    ) -> None:
        self.rule, self.feedback_seed, self.feedback_index = rule, seed, index
        self.feedback_skip = tuple(skip)
        self.exact, self.error_box, self.ran_forward = False, error_box, False
        self._step_gen: torch.Generator | None = None
        self._draw_cache: tuple[tuple[Any, ...], Tensor] | None = None
        state = None if rule.direct else rule.init_state(self.weight, layer_generator(seed, index))
        self.register_buffer("feedback_state", state)
        self.register_buffer("feedback_step", torch.zeros((), dtype=torch.long, device=self.weight.device))

    def uses_rule_backward(self) -> bool:
        return not self.exact and torch.is_grad_enabled()

    def feedback_for_forward(self) -> Tensor | DirectFeedback:
        if self.training and self.rule.per_step:
            self.feedback_step += 1
        if self.rule.direct:
            return DirectFeedback(self)
        with torch.no_grad():
            return self.rule.feedback(self).detach()

    def feedback_tensor(self) -> Tensor | None:
        """The B this layer's backward uses now (for DFA: B_l, None before the first backward)."""
        with torch.no_grad():
            return self.rule.feedback(self)

    def step_draw_abs(self) -> Tensor:
        """|R_t| of W's shape for the current step counter (brsf): |N(0, 1)|, or |xavier-uniform|.

        One generator per layer, re-seeded per step (building one costs more than seeding). In eval
        mode the counter is frozen, so the draw is kept and reused: it depends on the step, dtype
        and device only, never on W, so reusing it cannot go stale when W changes.
        """
        w = self.weight
        step = int(self.feedback_step)
        key = (step, w.shape, w.dtype, w.device)
        cache = self.__dict__.get("_draw_cache")
        if not self.training and cache is not None and cache[0] == key:
            return cache[1]
        gen = self.__dict__.get("_step_gen")
        if gen is None:
            gen = self._step_gen = torch.Generator(device="cpu")
        gen = layer_generator(self.feedback_seed, self.feedback_index, step, reuse=gen)
        draw = self.rule.draw(w, gen).abs_()  # N(0, 1), xavier-uniform or N(0, feedback_var / fan_in)
        if not self.training:
            self._draw_cache = (key, draw)
        elif cache is not None:
            self._draw_cache = None  # training redraws every step: hold no stale copy
        return draw

    def ensure_direct_matrix(self, out_size: int, in_size: int, in_hw: tuple[int, int] | None = None) -> Tensor:
        if self.feedback_state is None or self.feedback_state.shape != (out_size, in_size):
            if self.feedback_state is not None:
                raise RuntimeError(
                    f"dfa: layer expects output size {self.feedback_state.shape[0]} and input size "
                    f"{self.feedback_state.shape[1]}, got {out_size} and {in_size}"
                )
            gen = layer_generator(self.feedback_seed, self.feedback_index)
            self.feedback_state = self.rule.direct_matrix(self, out_size, in_size, gen, in_hw)  # type: ignore[attr-defined]
        return self.feedback_state

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # A lazily drawn DFA matrix is still None in a fresh model: take its shape from the file.
        key = prefix + "feedback_state"
        if key in state_dict and self.feedback_state is None:
            self.feedback_state = torch.empty_like(state_dict[key], device=self.weight.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rule={self.rule!r}"


class FeedbackLinear(FeedbackLayer, nn.Linear):
    def forward(self, x: Tensor) -> Tensor:
        if not self.ran_forward:
            self.ran_forward = True
        if not self.uses_rule_backward():
            return F.linear(x, self.weight, self.bias)
        return FeedbackLinearFn.apply(x, self.weight, self.feedback_for_forward(), self.bias)


class FeedbackConv2d(FeedbackLayer, nn.Conv2d):
    def forward(self, x: Tensor) -> Tensor:
        if not self.ran_forward:
            self.ran_forward = True
        if self.padding_mode != "zeros":
            x, padding = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode), (0, 0)
        else:
            padding = self.padding
        if not self.uses_rule_backward():
            return F.conv2d(x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)
        if isinstance(padding, str):
            x, padding = _explicit_padding(x, padding, self.kernel_size, self.dilation, self.stride)
        return FeedbackConv2dFn.apply(
            x, self.weight, self.feedback_for_forward(), self.bias, self.stride, padding, self.dilation, self.groups
        )


def _explicit_padding(
    x: Tensor, mode: str, kernel: tuple[int, ...], dilation: tuple[int, ...], stride: tuple[int, ...]
) -> tuple[Tensor, tuple[int, int]]:
    """Turn padding='valid' / 'same' into numbers the autograd function takes.

    'same' pads d (k - 1) in total per dimension; when that is odd, torch puts the extra row /
    column after the input (right, bottom), which F.pad does here, outside the rule's function,
    so autograd routes the input gradient back through the pad exactly.
    """
    if mode == "valid":
        return x, (0, 0)
    if any(s != 1 for s in stride):
        raise SpecError(f"padding='same' needs stride 1, this conv has stride {tuple(stride)}")
    total = [d * (k - 1) for k, d in zip(kernel, dilation)]
    before = [t // 2 for t in total]
    extra_h, extra_w = (t - 2 * b for t, b in zip(total, before))
    if extra_h or extra_w:
        x = F.pad(x, (0, extra_w, 0, extra_h))
    return x, (before[0], before[1])
