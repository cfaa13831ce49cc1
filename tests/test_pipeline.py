"""The input pipeline: device-side transforms, worker processes and data-parallel shards change
where and by whom batches are made, never which batches (issue 13)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset, Subset

from ssbench.data import Augment, TensorImageDataset, load_data, make_loader
from ssbench.data.loader import FolderLoader, TensorLoader, default_workers, shard_bounds
from ssbench.errors import DataNotFoundError
from ssbench.specs import DataSpec


def grey_set(n: int = 23, side: int = 10) -> TensorImageDataset:
    g = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (n, 1, side, side), dtype=torch.uint8, generator=g)
    return TensorImageDataset(images, torch.arange(n) % 7, size=17, channels=3, augment=Augment(pad=2, flip=True))


def old_batches(ds: TensorImageDataset, rows: torch.Tensor, batch_size: int, seed: int, epoch: int) -> list:
    """Today's CPU path written out by hand: permutation, then per batch /255, grey -> RGB, zero pad,
    crop at the drawn offsets, flip the drawn half (loops per image), bilinear resize."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63))
    order = rows[torch.randperm(len(rows), generator=g)]
    p, out = ds.augment.pad, []
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        n = len(idx)
        x = ds.images[idx].float() / 255.0
        x = x.repeat(1, 3, 1, 1)
        oy = torch.randint(0, 2 * p + 1, (n,), generator=g)
        ox = torch.randint(0, 2 * p + 1, (n,), generator=g)
        flip = torch.rand(n, generator=g) < 0.5
        padded = F.pad(x, (p, p, p, p))
        h, w = x.shape[-2:]
        crops = []
        for i in range(n):
            c = padded[i, :, int(oy[i]) : int(oy[i]) + h, int(ox[i]) : int(ox[i]) + w]
            crops.append(c.flip(2) if flip[i] else c)
        x = torch.stack(crops)
        x = F.interpolate(x, size=(17, 17), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
        out.append((x, ds.labels[idx]))
    return out


def test_device_cpu_is_todays_path_bit_for_bit() -> None:
    ds = grey_set()
    sub = Subset(ds, list(range(2, 21)))
    for data, rows in ((ds, torch.arange(len(ds))), (sub, torch.arange(2, 21))):
        for device in (None, "cpu"):
            loader = make_loader(data, 5, shuffle=True, seed=3, device=device)
            assert isinstance(loader, TensorLoader) and len(loader) == len(range(0, len(rows), 5))
            for epoch in (0, 1):
                got = list(loader)
                want = old_batches(ds, rows, 5, seed=3, epoch=epoch)
                assert len(got) == len(want)
                for (x, y), (xw, yw) in zip(got, want):
                    assert x.shape == xw.shape and torch.equal(x, xw) and torch.equal(y, yw)


def test_tensor_shards_union_to_the_single_process_batches() -> None:
    ds = grey_set()
    for world, batch in ((2, 6), (3, 6)):  # 23 rows: a short last batch of 5, shared unevenly
        single = make_loader(ds, batch, shuffle=True, seed=1)
        single.set_epoch(2)
        whole = list(single)
        ranks = []
        for r in range(world):
            loader = make_loader(ds, batch, shuffle=True, seed=1, rank=r, world=world)
            assert len(loader) == len(single)
            loader.set_epoch(2)
            ranks.append(list(loader))
        for step, (x, y) in enumerate(whole):
            parts = [ranks[r][step] for r in range(world)]
            if step < len(whole) - 1:
                assert all(len(py) == batch // world for _, py in parts)
            assert torch.equal(torch.cat([px for px, _ in parts]), x)
            assert torch.equal(torch.cat([py for _, py in parts]), y)


def test_shard_bounds_partition_a_batch() -> None:
    for m in range(0, 13):
        for world in (1, 2, 3, 4):
            spans = [shard_bounds(m, r, world) for r in range(world)]
            assert spans[0][0] == 0 and spans[-1][1] == m
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
            sizes = [b - a for a, b in spans]
            assert max(sizes) - min(sizes) <= 1


def test_batch_size_must_divide_between_ranks() -> None:
    ds = grey_set()
    with pytest.raises(ValueError, match="does not divide"):
        make_loader(ds, 5, shuffle=True, rank=0, world=2)
    with pytest.raises(ValueError, match="rank 2 of world 2"):
        make_loader(ds, 4, shuffle=True, rank=2, world=2)


# -- folder data sets ------------------------------------------------------------------------------

def image_folder(root: Path, per_class: int = 7, side: int = 24) -> Path:
    """data_dir/{train,val}/<class>/*.jpg with distinct random content."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 2)):
        for c in ("ant", "bee"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, size=(side, side + 4, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(d / f"{i}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def folder_bundle(tmp_path_factory: pytest.TempPathFactory):
    root = image_folder(tmp_path_factory.mktemp("imagenet"))
    return load_data(DataSpec(name="imagenet", data_dir=root, image_size=16, augment=True, val_fraction=0.0))


def epochs_of(loader, epochs=(0, 1)) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    out = []
    for e in epochs:
        loader.set_epoch(e)
        out.append(list(loader))
    return out


def test_folder_workers_give_the_same_batches_in_the_same_order(folder_bundle) -> None:
    train = folder_bundle.train
    torch.manual_seed(11)
    rng = torch.get_rng_state()
    serial = make_loader(train, 4, shuffle=True, seed=9, workers=0)
    parallel = make_loader(train, 4, shuffle=True, seed=9, workers=2)
    assert isinstance(parallel, FolderLoader) and parallel.workers == 2 and len(parallel) == len(serial) == 4
    a, b = epochs_of(serial), epochs_of(parallel)
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is left alone, workers or not
    for epoch in (0, 1):
        # the order is the seeded permutation of (seed, epoch), the same rule as in-memory sets
        g = torch.Generator().manual_seed(9 * 1_000_003 + epoch)
        want = train.labels[torch.randperm(len(train), generator=g)]
        assert torch.equal(torch.cat([y for _, y in a[epoch]]), want)
        assert len(a[epoch]) == len(b[epoch])
        for (xa, ya), (xb, yb) in zip(a[epoch], b[epoch]):
            assert xa.shape[1:] == (3, 16, 16) and torch.equal(xa, xb) and torch.equal(ya, yb)
    # augmentation is on: an image's crop differs between epochs, but not between reruns of an epoch
    def by_index(batches, epoch):
        g = torch.Generator().manual_seed(9 * 1_000_003 + epoch)
        order = torch.randperm(len(train), generator=g).tolist()
        x = torch.cat([x for x, _ in batches])
        return {i: x[pos] for pos, i in enumerate(order)}

    e0, e1 = by_index(a[0], 0), by_index(a[1], 1)
    assert sum(not torch.equal(e0[i], e1[i]) for i in e0) >= len(e0) - 2
    again = epochs_of(make_loader(train, 4, shuffle=True, seed=9, workers=0), (1,))[0]
    assert all(torch.equal(x, x2) for (x, _), (x2, _) in zip(a[1], again))


def test_folder_shards_union_to_the_single_process_batches(folder_bundle) -> None:
    train = folder_bundle.train  # 14 images, batch 4: a short last batch of 2
    single = epochs_of(make_loader(train, 4, shuffle=True, seed=2, workers=0), (3,))[0]
    ranks = [epochs_of(make_loader(train, 4, shuffle=True, seed=2, workers=w, rank=r, world=2), (3,))[0]
             for r, w in ((0, 0), (1, 1))]
    assert len(ranks[0]) == len(ranks[1]) == len(single) == 4
    for step, (x, y) in enumerate(single):
        assert all(len(ranks[r][step][1]) == len(y) // 2 for r in range(2))
        assert torch.equal(torch.cat([ranks[0][step][0], ranks[1][step][0]]), x)
        assert torch.equal(torch.cat([ranks[0][step][1], ranks[1][step][1]]), y)


def test_a_rank_with_no_share_of_the_last_batch_still_takes_the_step(folder_bundle) -> None:
    test = folder_bundle.test  # 4 images, batch 3 over 3 ranks: the last batch has 1 image
    for r in range(3):
        batches = list(make_loader(test, 3, shuffle=False, workers=0, rank=r, world=3))
        assert len(batches) == 2 and len(batches[0][1]) == 1
        assert len(batches[1][1]) == (1 if r == 0 else 0) and batches[1][0].shape[1:] == (3, 16, 16)


class _Broken(Dataset):
    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int):
        if i == 4:
            raise DataNotFoundError("image 4.jpg listed but missing; fix the list file")
        return torch.zeros(3, 2, 2), i


def test_a_user_error_in_a_worker_keeps_its_type_and_one_line() -> None:
    for workers in (0, 1):
        with pytest.raises(DataNotFoundError) as info:
            list(make_loader(_Broken(), 2, shuffle=False, workers=workers))
        assert str(info.value) == "image 4.jpg listed but missing; fix the list file"


def test_default_workers_follow_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    for cores, world, want in ((1, 1, 0), (2, 1, 1), (4, 1, 3), (16, 1, 15), (64, 1, 16), (64, 8, 7), (16, 4, 3), (8, 8, 0)):
        monkeypatch.setattr("os.sched_getaffinity", lambda _pid, c=cores: set(range(c)), raising=False)
        assert default_workers(world) == want


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_match_the_cpu_ones_up_to_rounding() -> None:
    ds = grey_set(40, 28)
    ds.size = 224
    cpu = list(make_loader(ds, 16, shuffle=True, seed=4))
    gpu = list(make_loader(ds, 16, shuffle=True, seed=4, device="cuda"))
    for (xc, yc), (xg, yg) in zip(cpu, gpu):
        assert xg.is_cuda and yg.is_cuda and torch.equal(yg.cpu(), yc)
        torch.testing.assert_close(xg.cpu(), xc, atol=1e-5, rtol=0)
