"""One training step as the job's `ComputeSpec` says: the batch's memory format, the forward and the
loss at the job's precision, compiled or eager, the loss check, the (scaled) backward and the
optimiser step.

The step calls `forward` (the model itself, or a DistributedDataParallel wrapper of it), compiled
when asked; `model` stays the plain module the job evaluates, aligns and saves (a compiled module's
state_dict keys carry `_orig_mod.`). Evaluation, alignment and gradient-alignment metrics run on
`model` outside this step: eager and fp32.
"""
from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from rich.console import Console
from rich.markup import escape
from torch import Tensor, nn

from ssbench.specs import ComputeSpec
from ssbench.training.compiled import first_line, restore, snapshot, try_compile
from ssbench.training.device import batch_format
from ssbench.training.precision import MixedPrecision


class TrainStep:
    """`step(x, y, epoch) -> (outputs, loss)`: one optimisation step on a batch already on the device."""

    def __init__(
        self, model: nn.Module, loss: Callable[[Tensor, Tensor], Tensor], optimizer: torch.optim.Optimizer,
        compute: ComputeSpec, device: torch.device, *, forward: nn.Module | None = None,
        console: Console | None = None,
    ) -> None:
        self.model, self.loss, self.optimizer, self.device = model, loss, optimizer, device
        self.forward = forward if forward is not None else model
        self.precision = MixedPrecision(compute.precision, device)
        self.channels_last = compute.channels_last
        self.console = console
        self.compiled: nn.Module | None = None
        if compute.compile:
            self.compiled, why = try_compile(self.forward)
            if why is not None:
                self._warn(why)
        # the first compiled step may still fail (compilation is lazy): it runs as a trial
        self._trial = self.compiled is not None

    @property
    def ran_compiled(self) -> bool:
        """Whether the steps run compiled (False after a fall back to eager)."""
        return self.compiled is not None

    def __call__(self, x: Tensor, y: Tensor, epoch: int) -> tuple[Tensor, Tensor]:
        x = batch_format(x, self.channels_last)
        if not self._trial:
            return self._step(self.compiled if self.compiled is not None else self.forward, x, y, epoch)
        snap = snapshot(self.model, self.device)
        try:
            out, loss = self._forward_loss(self.compiled, x, y)  # type: ignore[arg-type]
        except Exception as err:  # noqa: BLE001  (whatever compiling raised: run eager, say why)
            return self._eager_after(err, snap, x, y, epoch)
        self._check(loss, epoch)
        try:
            self.optimizer.zero_grad(set_to_none=True)
            self.precision.backward(loss)  # the backward graph compiles here
        except Exception as err:  # noqa: BLE001
            return self._eager_after(err, snap, x, y, epoch)
        self.precision.step(self.optimizer)
        self._trial = False
        return out, loss

    def _forward_loss(self, forward: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        with self.precision.autocast():
            out = forward(x)
            return out, self.loss(out, y)

    @staticmethod
    def _check(loss: Tensor, epoch: int) -> None:
        # the unscaled loss: fp16's scaled backward may overflow (a skipped step), the loss must not
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {float(loss.detach())} at epoch {epoch}; lower the learning rate")

    def _step(self, forward: nn.Module, x: Tensor, y: Tensor, epoch: int) -> tuple[Tensor, Tensor]:
        out, loss = self._forward_loss(forward, x, y)
        self._check(loss, epoch)
        self.optimizer.zero_grad(set_to_none=True)
        self.precision.backward(loss)
        self.precision.step(self.optimizer)
        return out, loss

    def _eager_after(self, err: Exception, snap, x: Tensor, y: Tensor, epoch: int) -> tuple[Tensor, Tensor]:  # noqa: ANN001
        """The failed compiled trial undone (buffers, RNG; no optimiser step was taken), then the
        step and all later ones eager."""
        restore(self.model, snap)
        self.optimizer.zero_grad(set_to_none=True)
        self.compiled, self._trial = None, False
        self._warn(first_line(err))
        return self._step(self.forward, x, y, epoch)

    def _warn(self, why: str) -> None:
        text = f"warning: --compile: torch.compile failed ({why}); training runs eager"
        if self.console is not None:
            self.console.print(f"[yellow]{escape(text)}[/]", highlight=False)
        else:
            print(text, file=sys.stderr)
