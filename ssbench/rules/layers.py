"""Linear and Conv2d layers whose backward follows a learning rule.

`convert` swaps the class of existing nn.Linear / nn.Conv2d objects in place (no copy), so the
weight and bias Parameters, hooks and optimiser references stay the very same objects. The rule's
per-layer state lives in the `feedback_state` buffer and round-trips through `state_dict()`.

brsf's per-step draw |R_t| is made on the layer's own device, from a generator of that device kept
per layer and re-seeded per step by (seed, layer, step) (`layer_generator`). A CPU layer draws the
very numbers it always has; a CUDA layer draws other numbers (CUDA's Philox generator is not the
CPU's Mersenne twister), reproducible on the same kind of GPU, and identical on every rank of a
data-parallel job (same seed, same step counter, no copy from the host each step). Every other
random tensor of the rules (fa / frsf / ifa's R, DFA's B_l) is drawn once on a CPU generator: the
same numbers on every device.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssbench.errors import SpecError
from ssbench.rules.base import Rule, layer_generator
from ssbench.rules.functions import DirectFeedback, ErrorBox, FeedbackConv2dFn, FeedbackLinearFn, compute_dtype


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

    def mark_ran(self) -> None:
        # Compiled: set without reading it (a read is a guard, and the second call would recompile).
        # Eager: read first (nn.Module's setattr costs more than a small layer's forward).
        if torch.compiler.is_compiling() or not self.ran_forward:
            self.ran_forward = True

    def feedback_for_forward(self, dtype: torch.dtype | None) -> Tensor | DirectFeedback:
        """B for this forward's backward, in the compute dtype `dtype` (None: as the rule makes it).
        Rules compute B from detached tensors (no graph), so no no_grad block is needed here."""
        if self.training and self.rule.per_step:
            self._advance_step()
        if self.rule.direct:
            return DirectFeedback(self)
        b = self.rule.feedback(self)
        if b is self.feedback_state:  # a fixed B (fa, ifa): a buffer, never part of a graph
            return b if dtype is None else self.state_in_dtype(b, dtype)
        if b.requires_grad:  # a rule that kept W's graph (ours detach W first)
            b = b.detach()
        return b if dtype is None or b.dtype == dtype else b.to(dtype)

    def state_in_dtype(self, state: Tensor, dtype: torch.dtype) -> Tensor:
        """The fixed feedback state (fa / ifa's B, dfa's B_l) in `dtype`, cast once and kept while
        the state is unchanged, rather than once per step. Unchanged means the same buffer object,
        storage and version counter: a load_state_dict or in-place edit (version), a `.data`
        assignment (storage: the kept alias holds the old one, so its address cannot come back) or
        a move to another device (object) casts again. Like autograd's own saved-tensor checks, it
        cannot see a write made through another tensor that `.data` was set to. The kept copy
        costs the state's size in `dtype` (half of it for bf16 over fp32)."""
        if state.dtype == dtype or torch.compiler.is_compiling():  # compiled: the cast is fused
            return state.to(dtype)
        kept = self.__dict__.get("_state_cast")
        version, ptr = state._version, state.data_ptr()
        if kept is not None and kept[0] is state and kept[2] == (ptr, version) and kept[3].dtype == dtype:
            return kept[3]
        return _keep(self, "_state_cast", (state, state.detach(), (ptr, version), state.to(dtype)))[3]

    def feedback_tensor(self) -> Tensor | None:
        """The B this layer's backward uses now (for DFA: B_l, None before the first backward)."""
        with torch.no_grad():
            return self.rule.feedback(self)

    @torch.compiler.disable  # host-side bookkeeping (tensor versions): eager
    def _advance_step(self) -> None:
        """feedback_step += 1, and the host's copy of its value follows (see `_step_number`)."""
        t = self.feedback_step
        seen = self.__dict__.get("_step_seen")
        t += 1  # in place: the buffer's version moves by exactly one
        if seen is not None and seen[0] is t and seen[1] == t._version - 1:
            _keep(self, "_step_seen", (t, t._version, seen[2] + 1))

    def _step_number(self) -> int:
        """The step counter's value without a device sync. Reading a CUDA buffer with int() waits for
        the GPU, once per layer per step, which made brsf 0.64x plain BP on an H200. The value is
        followed on the host across our own increments, keyed by the buffer object and its version
        counter; anything else that changed the buffer (load_state_dict, a restore, a move to another
        device) changed its version or object, so the buffer is read once more."""
        t = self.feedback_step
        seen = self.__dict__.get("_step_seen")
        if seen is not None and seen[0] is t and seen[1] == t._version:
            return seen[2]
        value = int(t)
        _keep(self, "_step_seen", (t, t._version, value))
        return value

    @torch.compiler.disable  # a seeded Generator and a host-side step number: eager, one graph break
    def step_draw_abs(self) -> Tensor:
        """|R_t| of W's shape for the current step counter (brsf): |N(0, 1)|, or |xavier-uniform|.

        One generator per layer, on W's device, re-seeded per step (building one costs more than
        seeding; drawing on the device saves a host-to-device copy per step). In eval
        mode the counter is frozen, so the draw is kept and reused: it depends on the step, dtype
        and device only, never on W, so reusing it cannot go stale when W changes.
        """
        w = self.weight
        step = self._step_number()
        key = (step, w.shape, w.dtype, w.device)
        cache = self.__dict__.get("_draw_cache")
        if not self.training and cache is not None and cache[0] == key:
            return cache[1]
        gen = self.__dict__.get("_step_gen")
        if gen is None or gen.device != w.device:  # first draw, or the model moved to another device
            gen = _keep(self, "_step_gen", torch.Generator(device=w.device))
        gen = layer_generator(self.feedback_seed, self.feedback_index, step, reuse=gen)
        draw = self.rule.draw(w, gen).abs_()  # N(0, 1), xavier-uniform or N(0, feedback_var / fan_in)
        if not self.training:
            _keep(self, "_draw_cache", (key, draw))
        elif cache is not None:
            _keep(self, "_draw_cache", None)  # training redraws every step: hold no stale copy
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
        self.mark_ran()
        if self.exact or not torch.is_grad_enabled():
            return F.linear(x, self.weight, self.bias)
        if x.dim() == 1 and self.rule.direct:
            raise _unbatched_dfa_error("(in_features,)")
        dtype = compute_dtype(x)
        feedback = self.feedback_for_forward(dtype)
        if self.rule.direct:
            return _apply_eagerly(FeedbackLinearFn, x, self.weight, feedback, self.bias, dtype)
        return FeedbackLinearFn.apply(x, self.weight, feedback, self.bias, dtype)


class FeedbackConv2d(FeedbackLayer, nn.Conv2d):
    def forward(self, x: Tensor) -> Tensor:
        self.mark_ran()
        if self.exact or not torch.is_grad_enabled():
            return self._conv_forward(x, self.weight, self.bias)  # nn.Conv2d's own, any padding
        if x.dim() == 3:  # unbatched (C, H, W), which nn.Conv2d takes: a batch of one
            if self.rule.direct:
                raise _unbatched_dfa_error("(C, H, W)")
            return self.forward(x.unsqueeze(0)).squeeze(0)
        pre_pad, padding = self._pre_pad()
        if pre_pad is not None and not self.rule.direct:
            # outside the function: autograd's pad backward routes B's transposed conv to x exactly
            x, pre_pad = F.pad(x, pre_pad[0], mode=pre_pad[1]), None
        dtype = compute_dtype(x)
        feedback = self.feedback_for_forward(dtype)
        if self.rule.direct:
            return _apply_eagerly(FeedbackConv2dFn, x, self.weight, feedback, self.bias, self.stride, padding,
                                  self.dilation, self.groups, pre_pad, dtype)
        return FeedbackConv2dFn.apply(x, self.weight, feedback, self.bias, self.stride, padding,
                                      self.dilation, self.groups, pre_pad, dtype)

    def _pre_pad(self) -> tuple[tuple[tuple[int, ...], str] | None, tuple[int, int]]:
        """(F.pad widths, mode) to apply before the convolution, or None, and the convolution's own
        (symmetric, zero) padding in numbers.

        A padding mode other than zeros is all done by F.pad, as nn.Conv2d does it. padding='same'
        pads d (k - 1) in total per dimension; when that is odd, torch puts the extra row / column
        after the input (right, bottom), which only F.pad can do.
        """
        if self.padding_mode != "zeros":
            return (tuple(self._reversed_padding_repeated_twice), self.padding_mode), (0, 0)
        if self.padding == "valid":
            return None, (0, 0)
        if self.padding != "same":
            return None, self.padding  # type: ignore[return-value]
        if any(s != 1 for s in self.stride):
            raise SpecError(f"padding='same' needs stride 1, this conv has stride {tuple(self.stride)}")
        total = [d * (k - 1) for k, d in zip(self.kernel_size, self.dilation)]
        before = [t // 2 for t in total]
        extra_h, extra_w = (t - 2 * b for t, b in zip(total, before))
        pre_pad = ((0, extra_w, 0, extra_h), "constant") if extra_h or extra_w else None
        return pre_pad, (before[0], before[1])


def _keep(layer: nn.Module, name: str, value: Any) -> Any:
    """Set a plain per-layer cache attribute. nn.Module's __setattr__ (which looks for parameters,
    buffers and submodules of that name first) costs more than a small layer's products, per
    layer and step; these names are never any of those."""
    layer.__dict__[name] = value
    return value


def _apply(fn: type[torch.autograd.Function], *args: Any) -> Tensor:
    return fn.apply(*args)


# DFA's backward reads e from the model's ErrorBox, which another backward fills: state that a
# graph traced ahead of time cannot carry. Under torch.compile its layers run eagerly (one graph
# break each), the rest of the model compiles.
_apply_eagerly = torch.compiler.disable(_apply)


def _unbatched_dfa_error(shape: str) -> SpecError:
    # The model's output for an unbatched input has no batch axis either, so the output error e
    # cannot be split into per-example rows for B_l: refuse rather than mix rows up.
    return SpecError(f"dfa needs batched inputs; this layer got an unbatched {shape} input: add a batch "
                     "dimension (x.unsqueeze(0))")
