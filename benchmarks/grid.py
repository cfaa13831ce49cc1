"""Wall time of one recipe grid on the local executor vs the Ray executor, in one run.

The grid: LeNet trained from scratch on a Fashion-MNIST subset with 4 rules x 2 seeds = 8
independent jobs (digits / MLP where Fashion-MNIST is not installed). Local runs them one after
the other in this process (torch's default threads, and again at the Ray jobs' thread count, which
separates Ray's parallel efficiency from how well one job uses a second core); Ray runs one task per job with
`--cpus-per-job` cores each (its torch threads), on a local Ray of this machine's cores (or on
CUDA: one GPU per job, or the fraction given). Each executor gets a fresh store; the script checks
both finished the same job hashes and prints the largest test-accuracy difference (deterministic
on: zero at equal thread counts; torch's conv reductions differ between 1 and 2 threads), then
both wall times, Ray's start-up and the ratio against the target.

    .venv/bin/python benchmarks/grid.py [--epochs 3] [--train 0] [--cpus-per-job 1] [--device cpu]

Jobs must be long against Ray's fixed costs (starting Ray, a worker importing torch, loading the data):
with 2-second jobs those dominate and Ray loses; the default jobs take about 10-20 s each here.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

TARGET_RATIO = 1.6  # local wall time / Ray wall time on a 2-core machine

RECIPE = """
name: grid-bench
seeds: [0, 1]
data: {{name: {data}, classes: [0, 1, 2, 3, 4], val_fraction: 0.1{limit}, test_limit: 2000}}
models: [{{name: {model}}}]
device: {device}
finetune:
  from_scratch: true
  rules: [bp, fa, usf, frsf]
  epochs: {epochs}
  batch_size: 64
  deterministic: true
  optim: {{name: sgd, lr: 0.05, momentum: 0.9}}
"""


def _run(recipe_path: Path, folder: Path, executor: str, cpus: float, gpus: float | None,
         threads: int | None = None) -> tuple[float, dict]:
    import torch

    from ssbench.executors import run_recipe
    from ssbench.recipes import load_recipe
    from ssbench.recipes.schema import Resources
    from ssbench.store import open_store

    folder.mkdir()
    store = open_store(f"sqlite:///{folder / 'results.db'}")
    recipe = load_recipe(recipe_path)
    default_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    result = run_recipe(recipe, store, executor=executor, resources=Resources(cpus=cpus, gpus=gpus), quiet=True)
    wall = time.perf_counter() - t0
    torch.set_num_threads(default_threads)
    if result.failed:
        raise SystemExit(f"{executor}: {len(result.failed)} job(s) failed: {result.failed[0][1].error}")
    scores = {r.config_hash: (r.summary or {}).get("test_accuracy") for r in store.list_runs(status="finished")}
    store.close()
    return wall, scores


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def ray_startup_seconds() -> float:
    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray.shutdown()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train", type=int, default=0, help="training images per job (0: all of classes 0-4, 27000)")
    ap.add_argument("--cpus-per-job", type=float, default=1.0)
    ap.add_argument("--gpus-per-job", type=float, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data", default="auto", choices=["auto", "fashion-mnist", "digits"])
    args = ap.parse_args()
    data = args.data
    if data == "auto":
        data = "fashion-mnist" if Path("/usr/share/datasets/fashion-mnist").is_dir() else "digits"
    model = "lenet" if data == "fashion-mnist" else "mlp"
    train = args.train if data == "fashion-mnist" else min(args.train or 1200, 1200)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        recipe = root / "grid.yaml"
        recipe.write_text(RECIPE.format(data=data, model=model, limit=f", train_limit: {train}" if train else "",
                                    epochs=args.epochs, device=args.device))
        local_s, local_scores = _run(recipe, root / "local", "local", args.cpus_per_job, args.gpus_per_job)
        # the same jobs one after the other at the Ray jobs' thread count: Ray's own parallel
        # efficiency, apart from how well one job's torch ops use a second core
        one_s, _ = _run(recipe, root / "local1", "local", args.cpus_per_job, args.gpus_per_job,
                        threads=max(1, int(args.cpus_per_job)))
        ray_s, ray_scores = _run(recipe, root / "ray", "ray", args.cpus_per_job, args.gpus_per_job)
    startup = ray_startup_seconds()
    same = set(local_scores) == set(ray_scores)
    diff = max((abs(local_scores[k] - ray_scores[k]) for k in local_scores if k in ray_scores), default=float("nan"))
    ratio = local_s / ray_s
    print(f"grid: {len(local_scores)} jobs, {model} on {data} ({train or 'all'} train images, {args.epochs} epochs), device {args.device}, "
          f"{os.cpu_count()} cores, ray {args.cpus_per_job:g} cpu/job")
    print(f"local executor: {local_s:7.1f} s   (torch's default {torch_threads()} threads per job)")
    print(f"local executor: {one_s:7.1f} s   ({max(1, int(args.cpus_per_job))} thread per job, as the Ray jobs)")
    print(f"ray executor:   {ray_s:7.1f} s   (of which starting a local Ray: about {startup:.1f} s)")
    # bit-equal only at equal thread counts: local jobs use torch's default threads, Ray jobs their cpus
    print(f"same job hashes: {same}; test accuracy max |local - ray|: {diff:.4f}")
    print(f"speed-up local/ray: {ratio:.2f}x  target >= {TARGET_RATIO}x: {'PASS' if ratio >= TARGET_RATIO else 'FAIL'}")
    print(f"speed-up at equal threads per job: {one_s / ray_s:.2f}x")


if __name__ == "__main__":
    main()
