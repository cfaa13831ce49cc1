"""Throughput of ssbench's epsilon sweeps vs a naive torchattacks loop over epsilon.

Model: a BP LeNet trained briefly on Fashion-MNIST, or, when Fashion-MNIST is not installed, a BP MLP
on scikit-learn's 8x8 digits (bundled, zero-install; n is capped by its 397 test images).
Prints images x epsilons per second for FGSM and PGD-40 on the `paper` grid, the speed-up ratio with
PASS / FAIL against the target (>= 1.7x) and whether the curves agree: FGSM exactly (deterministic); PGD within one binomial
std (its random start depends on the batch composition). The naive loop's curve is read with the
same containment rule (broken at e => broken at e' > e) so both report the same quantity.

Then (--ensemble-n > 0) the AutoAttack ensemble (apgd-ce, apgd-t, fab-t, square; exact gradients)
as ssbench runs it, each member on the survivors of the ones before, against running every member
on every clean-correct example at every eps and taking the per-example worst case: the same curve
within one binomial std (APGD / FAB / Square draw random numbers per batch), target >= 1.5x.

    .venv/bin/python benchmarks/attack_sweep.py [--n 500] [--device cpu] [--data auto|fashion-mnist|digits]
                                                [--ensemble-n 200]
"""
from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
import torchattacks

from ssbench.attacks import ATTACKS, run_sweep
from ssbench.errors import SsbenchError
from ssbench.specs import resolve_eps

TARGET_RATIO = 1.7  # ssbench sweep vs naive torchattacks loop, images x epsilons per second
ENSEMBLE_RATIO = 1.5  # AutoAttack on survivors vs every member on every example at every eps


def lenet_fashion(device: torch.device, train_n: int = 10000):
    from ssbench.data import load_data
    from ssbench.models import Normalized, build_model
    from ssbench.specs import DataSpec, ModelSpec

    b = load_data(DataSpec(name="fashion-mnist", train_limit=train_n, test_limit=2000))
    net = Normalized(build_model(ModelSpec(name="lenet"), num_classes=10, in_channels=1, image_size=28), b.mean, b.std)
    xs = torch.stack([b.train[i][0] for i in range(len(b.train))])
    ys = torch.tensor([int(b.train[i][1]) for i in range(len(b.train))])
    xt = torch.stack([b.test[i][0] for i in range(len(b.test))])
    yt = torch.tensor([int(b.test[i][1]) for i in range(len(b.test))])
    return net.to(device), xs, ys, xt, yt, "LeNet / Fashion-MNIST"


def mlp_digits(device: torch.device):
    """Fallback: scikit-learn's digits (1797 images, 8x8, in [0, 1]), the same split as the tests."""
    from sklearn.datasets import load_digits
    from torch import nn

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    p = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[p], y[p]
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
    return net.to(device), x[:1400], y[:1400], x[1400:], y[1400:], "MLP / digits 8x8 (Fashion-MNIST not installed)"


def train(model, x, y, device, epochs: int = 2):
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(epochs):
        p = torch.randperm(len(x))
        for i in range(0, len(x), 128):
            j = p[i : i + 128]
            opt.zero_grad()
            F.cross_entropy(model(x[j].to(device)), y[j].to(device)).backward()
            opt.step()
    return model.eval()


def naive(model, make, x, y, grid, batch):
    """What people write: attack every example at every epsilon with torchattacks."""
    t0 = time.perf_counter()
    with torch.no_grad():
        alive = model(x).argmax(1) == y
    curve, raw = [], []
    for e in grid:
        torch.manual_seed(0)
        adv = torch.cat([x[i : i + batch] if e == 0 else make(e)(x[i : i + batch], y[i : i + batch])
                         for i in range(0, len(x), batch)])
        with torch.no_grad():
            ok = model(adv).argmax(1) == y
        raw.append(float(ok.float().mean()))
        alive = alive & ok
        curve.append(float(alive.float().mean()))
    return curve, raw, time.perf_counter() - t0


def ensemble(model, x, y, grid, batch) -> tuple[list[float], float, list[float], float]:
    """(survivor curve, seconds, every-example curve, seconds) of the AutoAttack ensemble."""
    from ssbench.attacks.ensemble import ENSEMBLES

    members = [ATTACKS.get(n)(seed=0) for n in ENSEMBLES["autoattack"]]
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    t0 = time.perf_counter()
    standing = {float(e): clean.clone() for e in grid}
    for atk in members:
        c = run_sweep(atk, model, model, x, y, grid, mode="exact", batch_size=batch, standing=standing)
        standing.update({e: k.to(x.device) for e, k in zip(c.eps, c.correct)})
    survivors = [float(standing[float(e)].float().mean()) for e in grid]
    t_survivors = time.perf_counter() - t0
    t0 = time.perf_counter()
    alive = {float(e): clean.clone() for e in grid}
    for atk in members:
        for k, e in enumerate(grid):
            if e == 0:
                continue
            adv = torch.cat([atk.perturb(model, x[i : i + batch], y[i : i + batch], e, call=k)
                             for i in range(0, len(x), batch)])
            with torch.no_grad():
                alive[float(e)] &= model(adv).argmax(1) == y
    everything = [float(alive[float(e)].float().mean()) for e in grid]
    return survivors, t_survivors, everything, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data", choices=("auto", "fashion-mnist", "digits"), default="auto",
                    help="auto: Fashion-MNIST when installed, else the digits MLP")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3, help="FGSM timings: best of this many runs")
    ap.add_argument("--ensemble-n", type=int, default=200, help="examples for the AutoAttack comparison (0: skip it)")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    loaded = None
    if args.data != "digits":
        try:
            loaded, epochs = lenet_fashion(device), 2
        except (SsbenchError, OSError) as err:  # not installed, no network: fall back, say so
            if args.data == "fashion-mnist":
                raise SystemExit(f"Fashion-MNIST not available ({err}); install dataset-fashion-mnist") from err
            print(f"Fashion-MNIST not available ({err}); falling back to the digits MLP")
    if loaded is None:
        loaded, epochs = mlp_digits(device), 20  # 1400 images: ~220 steps to a confident model
    model, xs, ys, xt, yt, what = loaded
    model = train(model, xs, ys, device, epochs)
    x, y = xt[: args.n].to(device), yt[: args.n].to(device)
    grid = list(resolve_eps("paper"))
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    print(f"{what}: clean accuracy {clean:.3f} on n={len(x)}; eps grid {grid}")
    units = len(x) * len(grid)
    std = math.sqrt(0.25 / len(x))
    verdicts: list[str] = []
    totals = [0.0, 0.0]  # naive, ssbench seconds
    for name, steps, make in (
        ("fgsm", None, lambda e: torchattacks.FGSM(model, eps=e)),
        ("pgd", 40, lambda e: torchattacks.PGD(model, eps=e, alpha=2.5 * e / 40, steps=40, random_start=True)),
    ):
        attack = ATTACKS.get(name)(steps=steps, seed=0)
        run_sweep(attack, model, model, x[:64], y[:64], grid[:3], mode="exact")  # warm-up (kernels, threads)
        naive(model, make, x[:64], y[:64], grid[:3], args.batch)
        t_fast = t_naive = float("inf")
        for _ in range(args.repeat if name == "fgsm" else 1):  # best of: the machine is shared
            t0 = time.perf_counter()
            fast = run_sweep(attack, model, model, x, y, grid, mode="exact", batch_size=args.batch)
            t_fast = min(t_fast, time.perf_counter() - t0)
            curve, raw, t = naive(model, make, x, y, grid, args.batch)
            t_naive = min(t_naive, t)
        diff = max(abs(a - b) for a, b in zip(fast.robust(), curve))
        equal = diff == 0 if name == "fgsm" else diff <= std
        print(f"\n{name}{'-' + str(steps) if steps else ''}: ssbench {units / t_fast:9.0f} img*eps/s ({t_fast:.2f}s)   "
              f"naive torchattacks loop {units / t_naive:9.0f} img*eps/s ({t_naive:.2f}s)   ratio {t_naive / t_fast:.2f}x")
        print(f"  ssbench curve : {' '.join(f'{r:.3f}' for r in fast.robust())}")
        print(f"  naive (cum.)  : {' '.join(f'{r:.3f}' for r in curve)}")
        print(f"  naive (raw)   : {' '.join(f'{r:.3f}' for r in raw)}")
        print(f"  curves equal: {equal} (max |diff| {diff:.4f}; allowed {'0' if name == 'fgsm' else f'{std:.4f} = 1 binomial std'})")
        ratio = t_naive / t_fast
        verdict = "PASS" if ratio >= TARGET_RATIO and equal else "FAIL"
        print(f"  {verdict}: speed-up {ratio:.2f}x vs target {TARGET_RATIO}x" + ("" if equal else "; curves disagree"))
        verdicts.append(verdict)
        totals[0] += t_naive
        totals[1] += t_fast
    print(f"\noverall: {'PASS' if all(v == 'PASS' for v in verdicts) else 'FAIL'} (every attack >= {TARGET_RATIO}x with "
          f"equal curves; both attacks together {totals[0] / totals[1]:.2f}x)")
    if args.ensemble_n > 0:
        xe, ye, egrid = x[: args.ensemble_n], y[: args.ensemble_n], [0.0, 0.05, 0.1]
        surv, t_s, every, t_e = ensemble(model, xe, ye, egrid, args.batch)
        e_std = math.sqrt(0.25 / len(xe))
        diff = max(abs(a - b) for a, b in zip(surv, every))
        ratio = t_e / t_s
        print(f"\nautoattack (exact) on n={len(xe)}, eps {egrid}: on survivors {t_s:.1f}s   every member on every "
              f"example {t_e:.1f}s   ratio {ratio:.2f}x")
        print(f"  survivors : {' '.join(f'{r:.3f}' for r in surv)}")
        print(f"  everything: {' '.join(f'{r:.3f}' for r in every)}")
        ok = ratio >= ENSEMBLE_RATIO and diff <= e_std
        print(f"  {'PASS' if ok else 'FAIL'}: speed-up {ratio:.2f}x vs target {ENSEMBLE_RATIO}x; max |diff| {diff:.4f} "
              f"(allowed {e_std:.4f} = 1 binomial std)")


if __name__ == "__main__":
    main()
