"""Throughput of the folder-data input pipeline: images/s with 0 workers vs N (the default).

Writes a synthetic ImageNet-layout folder itself (``--classes`` x ``--per-class`` JPEGs of
``--side`` px, smooth random colour fields with noise, so they decode like photos rather than like
flat or pure-noise files) into a temporary directory, loads it through ``ssbench.data.load_data``
(``imagenet``, 224 px, RandomResizedCrop + flip) and times one epoch of ``make_loader`` per worker
count, after its first batch (worker start-up is a one-off with persistent workers). Prints both
rates, the ratio, and whether both epochs held the same batches (they must: item transforms are
seeded by (seed, epoch, index), not by the process that decodes them).

    .venv/bin/python benchmarks/pipeline.py [--per-class 300] [--classes 2] [--side 256] [--size 224]
                                            [--batch 64] [--workers N]

On a 2-core machine the default is 1 worker, so expect a ratio near 1 (the worker decodes while
the main process only waits); the gain grows with the cores. Seen on a 16-core H200 machine
(2026-12): 0 workers 481 images/s, 8 workers 2775 (5.8x); with 2 x 1000 images, 15 workers (the
default there) 4732 vs 417 (11.4x), the same batches every time.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ssbench.data import load_data, make_loader
from ssbench.data.loader import default_workers
from ssbench.specs import DataSpec


def write_folder(root: Path, classes: int, per_class: int, side: int, seed: int = 0) -> None:
    """root/{train,val}/c<k>/<i>.jpg: train has per_class images per class, val two."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", 2)):
        for c in range(classes):
            d = root / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(n):
                coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((side, side), Image.BICUBIC)
                pixels = np.asarray(coarse, dtype=np.int16) + rng.integers(-20, 21, (side, side, 3))
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(d / f"{i}.jpg", quality=90)


def epoch_rate(train, batch: int, workers: int) -> tuple[float, list[torch.Tensor]]:
    """Images/s over one epoch after its first batch, and a checksum per batch."""
    loader = make_loader(train, batch, shuffle=True, seed=0, drop_last=True, workers=workers)
    sums, n, t0 = [], 0, 0.0
    for i, (x, _) in enumerate(loader):
        sums.append(x[:, :, ::7, ::7].double().sum())  # a sparse checksum: the main process must not be the bottleneck
        if i == 0:
            t0 = time.perf_counter()
        else:
            n += len(x)
    return n / (time.perf_counter() - t0), sums


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=2)
    ap.add_argument("--per-class", type=int, default=300)
    ap.add_argument("--side", type=int, default=256, help="side of the JPEGs written")
    ap.add_argument("--size", type=int, default=224, help="training image size (RandomResizedCrop)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=None, help="N to compare with 0 (default: default_workers())")
    args = ap.parse_args()
    workers = default_workers() if args.workers is None else args.workers
    torch.set_num_threads(1)  # the main process of a training job spends its cores on the model, not on decoding

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        write_folder(Path(tmp), args.classes, args.per_class, args.side)
        print(f"wrote {args.classes} x {args.per_class} JPEGs of {args.side} px in {time.perf_counter() - t:.1f} s")
        bundle = load_data(DataSpec(name="imagenet", data_dir=Path(tmp), image_size=args.size, augment=True,
                                    val_fraction=0.0))
        if len(bundle.train) < 2 * args.batch:
            raise SystemExit(f"{len(bundle.train)} images: need at least two batches of {args.batch}")
        serial, sums0 = epoch_rate(bundle.train, args.batch, 0)
        parallel, sumsn = epoch_rate(bundle.train, args.batch, workers)
    same = len(sums0) == len(sumsn) and all(bool(a == b) for a, b in zip(sums0, sumsn))
    print(f"folder pipeline, {args.size} px, augment, batch {args.batch}, {len(bundle.train)} images")
    print(f"  0 workers: {serial:8.1f} images/s")
    print(f"  {workers} workers: {parallel:8.1f} images/s")
    print(f"  ratio    : {parallel / serial:8.2f}x    same batches: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
