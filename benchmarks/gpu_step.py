"""Training-step throughput of every rule against plain PyTorch BP, per precision, measured in one run.

The sign-symmetry paper's setting: torchvision ResNet-18 at 224 px, 10 classes (CIFAR-10 fine-tune),
batch 128. "plain" is the unconverted network with autograd's own backward, at the same precision
and memory format: the honest baseline. Every rule runs through the feedback engine. Target: each
rule >= 0.9x plain's images/s. Also printed: each rule's bf16 speed-up over its own fp32 step, and
peak memory on CUDA.

Models are timed round-robin within a precision, so drift in clocks or load hits every rule alike;
the figure is the best of `--repeats` (noise only ever adds time), the median beside it. On CUDA
each repeat is `--steps` steps between two synchronisations.

    python benchmarks/gpu_step.py [--batch 128] [--size 224] [--precisions fp32,bf16]
                                  [--channels-last/--no-channels-last] [--compile] [--repeats 5]

On a CPU (no GPU at hand) use a small batch and size, e.g. --batch 8 --size 64 --repeats 2.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from ssbench.models import build_model
from ssbench.rules import RULES, convert
from ssbench.specs import ModelSpec

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(model: torch.nn.Module, precision: str, device: torch.device):  # noqa: ANN201
    """One SGD step at `precision` (autocast; fp16 with a gradient scaler), as the training engine runs it."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        ctx = torch.autocast(device.type, DTYPES[precision]) if precision in DTYPES else nullcontext()
        with ctx:
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()

    return step


def bench(args: argparse.Namespace, device: torch.device, precision: str, rules: list[str]) -> dict[str, dict[str, float]]:
    torch.manual_seed(0)
    base = build_model(ModelSpec(name=args.model), num_classes=10, in_channels=3, image_size=args.size)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    x = torch.rand(args.batch, 3, args.size, args.size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (args.batch,), device=device)
    models = {"plain": copy.deepcopy(base)}
    for rule in rules:
        models[rule] = convert(copy.deepcopy(base), rule, seed=0)
    steps, peaks = {}, {}
    for name, m in models.items():
        held = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0  # the models before this one
        m.to(device=device, memory_format=fmt).train()
        if args.compile:
            m = torch.compile(m)
        steps[name] = make_step(m, precision, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(args.warmup):  # allocator, cuDNN autotuning, DFA's lazy matrices, compilation
            steps[name](x, y)
        _sync(device)
        # this model's own peak: its weights, state, activations and workspaces, not the models before it
        peaks[name] = (torch.cuda.max_memory_allocated(device) - held) / 2**30 if device.type == "cuda" else float("nan")
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(args.repeats):
        for name, step in steps.items():
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(x, y)
            _sync(device)
            times[name].append((time.perf_counter() - t0) / args.steps)
    return {k: {"best": min(v), "median": statistics.median(v), "peak_gib": peaks[k]} for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--rules", default=",".join(RULES.names()))
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    rules = [r for r in args.rules.split(",") if r]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__} on {name}; {args.model} {args.size}px, batch {args.batch}, "
          f"{'channels-last' if args.channels_last else 'contiguous'}{', compiled' if args.compile else ''}; "
          f"best (median) of {args.repeats} x {args.steps} steps, models interleaved")
    results = {}
    worst = float("inf")
    for precision in [p for p in args.precisions.split(",") if p]:
        r = results[precision] = bench(args, device, precision, rules)
        plain = r["plain"]["best"]
        print(f"\n{precision}: plain BP {args.batch / plain:8.1f} images/s ({plain * 1e3:.1f} ms/step)")
        for k in ["plain", *rules]:
            ratio = plain / r[k]["best"]  # throughput ratio: rule's images/s over plain's
            if k != "plain":
                worst = min(worst, ratio)
            med = r["plain"]["median"] / r[k]["median"]
            mem = f"  peak {r[k]['peak_gib']:5.2f} GiB" if device.type == "cuda" else ""
            flag = "" if k == "plain" or ratio >= 0.9 else "  <-- below 0.9x target"
            print(f"  {k:6s} {args.batch / r[k]['best']:8.1f} images/s  {ratio:5.2f}x plain "
                  f"(median {med:5.2f}x){mem}{flag}")
    if "fp32" in results and len(results) > 1:
        for precision in [p for p in results if p != "fp32"]:
            ups = {k: results["fp32"][k]["best"] / results[precision][k]["best"] for k in results["fp32"]}
            print(f"\n{precision} speed-up over fp32: " + ", ".join(f"{k} {v:.2f}x" for k, v in ups.items()))
    verdict = "PASS" if worst >= 0.9 else "FAIL"
    print(f"\nworst rule / plain throughput: {worst:.2f}x (target >= 0.9x): {verdict}")


if __name__ == "__main__":
    main()
