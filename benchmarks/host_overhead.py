"""Host cost per converted layer: each rule's Python and dispatch work against plain autograd's.

On a GPU a small-to-medium step is host-bound (bf16, channels-last ResNet-18 on an H200: the GPU
idles while Python launches kernels), so what a rule adds on the host per layer and step is what
it costs. This benchmark isolates that cost on any machine: a deep stack of tiny convolutions and
linears (4 channels, 4x4 maps, batch 1) whose arithmetic is negligible, so the step time is the
host's work. Printed per rule: microseconds per layer and step (forward, loss, backward), the extra
over plain PyTorch BP, and plain's time over the rule's (1.0 = no host overhead at all).

Models are timed round-robin, best of `--repeats` (noise only adds time), one thread.

    python benchmarks/host_overhead.py [--layers 32] [--repeats 15] [--steps 50] [--precisions fp32,bf16]
"""
from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F
from torch import nn

from ssbench.rules import RULES, convert


def stack(layers: int) -> nn.Module:
    """Three quarters 3x3 convs, one quarter linears: both autograd Functions are exercised."""
    convs = [nn.Conv2d(4, 4, 3, padding=1) for _ in range(layers - layers // 4)]
    linears = [nn.Linear(64, 64) for _ in range(layers // 4)]
    return nn.Sequential(*convs, nn.Flatten(), *linears, nn.Linear(64, 10))


def step_time(model: nn.Module, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype | None, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        for p in model.parameters():
            p.grad = None
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--precisions", default="fp32,bf16")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    base = stack(args.layers)
    n_layers = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in base.modules())
    models = {"plain": copy.deepcopy(base)}
    models.update({rule: convert(copy.deepcopy(base), rule, seed=0) for rule in RULES.names()})
    x, y = torch.rand(1, 4, 4, 4), torch.tensor([3])
    for precision in args.precisions.split(","):
        dtype = {"fp32": None, "bf16": torch.bfloat16}[precision]
        best = {k: float("inf") for k in models}
        for m in models.values():
            m.train()
            step_time(m, x, y, dtype, 3)  # warm-up (DFA draws its matrices lazily)
        for _ in range(args.repeats):
            for k, m in models.items():
                best[k] = min(best[k], step_time(m, x, y, dtype, args.steps))
        plain = best["plain"]
        print(f"\n{precision}: {n_layers} layers, torch {torch.__version__}, 1 thread")
        print(f"{'model':8s} {'us/layer':>9s} {'extra us/layer':>15s} {'plain/rule':>11s}")
        for k, v in best.items():
            print(f"{k:8s} {v / n_layers * 1e6:9.1f} {(v - plain) / n_layers * 1e6:15.1f} {plain / v:10.2f}x")


if __name__ == "__main__":
    main()
