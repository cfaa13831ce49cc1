"""Training precision (`ComputeSpec.precision`): autocast for the forward and the loss, and fp16's
gradient scaler.

bf16 and fp16 run the forward and the loss under `torch.autocast`: each op computes in the low
precision where autocast allows it, while the weights, their gradients and the optimiser state stay
fp32 (autocast casts per op, never the parameters). bf16 keeps fp32's exponent range and needs
nothing more. fp16's narrow range flushes small gradients to zero, so its backward runs on the loss
times a scale (`torch.amp.GradScaler`), unscaled before the optimiser step; a step whose gradients
overflow at the current scale is skipped and the scale halved: fp16's normal operation, not a
failure. Gradients that overflow at every scale are a divergence (`MIN_SCALE`).

fp16 is allowed on the CPU: torch 2.x autocasts and scales there too (slowly: few CPUs compute in
fp16), which is what lets the scaler path be tested on a machine without a GPU.
"""
from __future__ import annotations

import dataclasses
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from ssbench.errors import SpecError

AUTOCAST_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}
# The scaler starts at 2**16 and halves at each overflowing step; 32 overflows in a row bring it
# here. Gradients that still overflow at this scale are > 65504 * 2**16 in true size: the run
# diverged, and skipping every step from now on would only hide it.
MIN_SCALE = 2.0**-16


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The dtype autocast computes in for `precision`; None for fp32 (no autocast)."""
    return AUTOCAST_DTYPES.get(precision)


def autocast(precision: str, device: torch.device) -> AbstractContextManager[Any]:
    """The context the forward (and the loss) of a model at `precision` runs in on `device`."""
    dtype = autocast_dtype(precision)
    if dtype is None:
        return nullcontext()
    if not torch.amp.is_autocast_available(device.type):
        raise SpecError(f"precision {precision}: torch has no autocast on {device.type} devices; use --precision fp32")
    return torch.autocast(device.type, dtype=dtype)


class MixedPrecision:
    """The precision of one training job: `autocast()` around forward and loss, then `backward`
    and `step` (scaled in fp16)."""

    def __init__(self, precision: str, device: torch.device) -> None:
        self.precision, self.device = precision, device
        autocast(precision, device)  # a device without autocast is refused here, before any step
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def autocast(self) -> AbstractContextManager[Any]:
        return autocast(self.precision, self.device)

    def backward(self, loss: Tensor) -> None:
        """Gradients of `loss` into the (zeroed) .grad: of the scaled loss in fp16."""
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimiser step. fp16: unscale the gradients first, skip the step where they
        overflowed and move the scale; a scale driven below MIN_SCALE is a divergence."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()
        scale = self.scaler.get_scale()
        if scale < MIN_SCALE:
            raise FloatingPointError(f"fp16 gradients overflow even at loss scale {scale:.3g}: training diverged; "
                                     "lower the learning rate or use --precision bf16")

    def state_dict(self) -> dict[str, Any] | None:
        """The scaler's state (scale, growth tracker) for a resume; None without a scaler."""
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


class Autocast(nn.Module):
    """`module`'s forward under autocast at `precision` (on the input's device), a bf16 / fp16
    output cast back to fp32: a trained model run as it was trained. Shares `module`'s parameters
    and buffers. A float64 copy (the attacks' gradient check) stays float64: autocast leaves
    float64 ops alone, and so does the cast."""

    def __init__(self, module: nn.Module, precision: str) -> None:
        super().__init__()
        self.module, self.precision = module, precision

    def forward(self, x: Tensor) -> Tensor:
        with autocast(self.precision, x.device):
            out = self.module(x)
        return out.float() if out.dtype in (torch.float16, torch.bfloat16) else out


def at_training_precision(trained: Any) -> Any:
    """A TrainedModel (checkpoint.py) whose model runs at the precision its training run used
    (its stored compute.precision); itself when that was fp32."""
    precision = trained.spec.compute.precision
    if autocast_dtype(precision) is None:
        return trained
    return dataclasses.replace(trained, model=Autocast(trained.model, precision))
