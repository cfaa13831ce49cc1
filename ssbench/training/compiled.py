"""`torch.compile` for the training forward (`ComputeSpec.compile`), and what falling back to eager
needs.

torch.compile is lazy: wrapping a module compiles nothing; the forward graph is traced and compiled
at the first call, the backward graph at the first backward. A failure can therefore surface at
wrap time, in the first forward or in the first backward. The training step (step.py) treats its
first compiled step as a trial: on a failure it puts back what the compiled attempt changed (buffers
such as BatchNorm statistics and the rules' step counters, the RNG a dropout mask drew from) and runs
that step and all later ones eager, after one warning line.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


def first_line(err: BaseException) -> str:
    """The exception's first non-empty line, with its type: what a one-line warning shows. A first
    line that only announces the next ("backend='inductor' raised:") takes the next one along."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    if not lines:
        return type(err).__name__
    head = f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    return f"{type(err).__name__}: {head}"


def try_compile(module: nn.Module) -> tuple[nn.Module | None, str | None]:
    """(the compiled module, None), or (None, why) where torch.compile refuses at wrap time. The
    compiled module shares `module`'s parameters and buffers; its own state_dict keys carry an
    `_orig_mod.` prefix, so checkpoints are always taken from `module`."""
    try:
        return torch.compile(module), None
    except Exception as err:  # noqa: BLE001  (any refusal means: run eager, say why)
        return None, first_line(err)


@dataclass
class Snapshot:
    """What one training step may change besides the weights and the optimiser (which a failed first
    step has not reached yet): buffers and the RNG states of the CPU and the model's device."""

    buffers: dict[str, Tensor]
    cpu_rng: Tensor
    cuda_rng: Tensor | None
    device: torch.device


def snapshot(model: nn.Module, device: torch.device) -> Snapshot:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return Snapshot({k: b.detach().clone() for k, b in model.named_buffers()}, torch.get_rng_state(), cuda, device)


def restore(model: nn.Module, snap: Snapshot) -> None:
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name in snap.buffers:
                b.copy_(snap.buffers[name])
    torch.set_rng_state(snap.cpu_rng)
    if snap.cuda_rng is not None:
        torch.cuda.set_rng_state(snap.cuda_rng, snap.device)
