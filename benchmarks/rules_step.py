"""Training-step time of each rule divided by BP's, on CPU, measured in one run.

Models: LeNet on Fashion-MNIST-sized input (1x28x28) and CIFAR ResNet-20 (3x32x32).
BP is the *unconverted* network with plain autograd (the honest baseline); every rule runs through
the feedback engine. Target: each rule <= 1.15x BP. Timings interleave the rules round-robin, so
drift in machine load affects every rule alike. The ratio uses the *minimum* over repeats (as
timeit does: noise only ever adds time, and on a shared 2-core machine the median of identical
models still differed by 20%); the median ratio is printed beside it.

    python benchmarks/rules_step.py [--repeats 15] [--steps 3] [--batch 128] [--threads N]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from ssbench.models import build_model
from ssbench.rules import convert
from ssbench.specs import ModelSpec

RULES = ["bp", "fa", "dfa", "usf", "frsf", "brsf", "ifa"]


def step_time(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return (time.perf_counter() - t0) / steps


def bench(arch: str, channels: int, size: int, batch: int, steps: int, repeats: int) -> dict[str, tuple[float, float]]:
    torch.manual_seed(0)
    base = build_model(ModelSpec(name=arch), num_classes=10, in_channels=channels, image_size=size)
    models = {"plain-bp": copy.deepcopy(base)}
    for rule in RULES:
        models[rule] = convert(copy.deepcopy(base), rule, seed=0)
    x = torch.rand(batch, channels, size, size)
    y = torch.randint(0, 10, (batch,))
    opts = {k: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for k, m in models.items()}
    for k, m in models.items():  # warm-up (allocator, DFA lazy matrices)
        m.train()
        step_time(m, opts[k], x, y, 2)
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(repeats):
        for k, m in models.items():
            times[k].append(step_time(m, opts[k], x, y, steps))
    return {k: (min(v), statistics.median(v)) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, "
          f"min (median) of {args.repeats} x {args.steps} steps, rules interleaved")
    worst = 0.0
    for arch, c, s in [("lenet", 1, 28), ("resnet20", 3, 32)]:
        t = bench(arch, c, s, args.batch, args.steps, args.repeats)
        ref_min, ref_med = t["plain-bp"]
        print(f"\n{arch} ({c}x{s}x{s}): plain BP step {ref_min * 1e3:.1f} ms (median {ref_med * 1e3:.1f} ms)")
        for k in ["plain-bp", *RULES]:
            tmin, tmed = t[k]
            ratio = tmin / ref_min
            if k != "plain-bp":
                worst = max(worst, ratio)
            flag = "" if ratio <= 1.15 else "  <-- above 1.15x target"
            print(f"  {k:9s} {tmin * 1e3:8.1f} ms   {ratio:5.2f}x   (median {tmed / ref_med:5.2f}x){flag}")
    verdict = "PASS" if worst <= 1.15 else "FAIL"
    print(f"\nworst rule / BP ratio: {worst:.2f}x (target <= 1.15x): {verdict}")


if __name__ == "__main__":
    main()
