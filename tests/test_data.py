from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from pydantic import ValidationError

from ssbench.data import (
    DATASETS,
    TensorImageDataset,
    check_data,
    load_data,
    make_loader,
    read_idx,
    stratified_sample,
    train_val_split,
)
from ssbench.data.sources import DEBIAN_FASHION_MNIST
from ssbench.data.tensor_dataset import Augment, random_crop_flip
from ssbench.errors import DataNotFoundError, SpecError, SsbenchError
from ssbench.specs import DataSpec


def write_idx(path: Path, array: np.ndarray, code: int, gz: bool) -> None:
    """Independent IDX writer following the format spec (big-endian header)."""
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape)
    big = array.astype(array.dtype.newbyteorder(">"))
    payload = header + big.tobytes()
    (gzip.open if gz else open)(path, "wb").write(payload)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_roundtrip(tmp_path: Path, gz: bool) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 3, 4), dtype=np.uint8)
    p = tmp_path / ("x.idx" + (".gz" if gz else ""))
    write_idx(p, images, 0x08, gz)
    np.testing.assert_array_equal(read_idx(p), images)
    ints = rng.integers(-1000, 1000, size=(7,), dtype=np.int32)
    q = tmp_path / "y.idx"
    write_idx(q, ints, 0x0C, False)
    np.testing.assert_array_equal(read_idx(q), ints)


def test_read_idx_rejects_garbage(tmp_path: Path) -> None:
    p = tmp_path / "bad"
    p.write_bytes(b"\x01\x02\x03\x04hello")
    with pytest.raises(DataNotFoundError):
        read_idx(p)


def _fake_fashion(folder: Path, n_train: int = 40, n_test: int = 20) -> tuple[np.ndarray, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    ytr = np.arange(n_train, dtype=np.uint8) % 10
    yte = np.arange(n_test, dtype=np.uint8) % 10
    xtr = rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8)
    xte = rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8)
    write_idx(folder / "train-images-idx3-ubyte.gz", xtr, 0x08, True)
    write_idx(folder / "train-labels-idx1-ubyte.gz", ytr, 0x08, True)
    write_idx(folder / "t10k-images-idx3-ubyte", xte, 0x08, False)
    write_idx(folder / "t10k-labels-idx1-ubyte", yte, 0x08, False)
    return xtr, ytr


def test_fashion_from_data_dir_and_remap(tmp_path: Path) -> None:
    xtr, ytr = _fake_fashion(tmp_path / "fm")
    b = load_data(DataSpec(name="fashion-mnist", data_dir=tmp_path / "fm", classes=(7, 2), val_fraction=0.0, download=False))
    assert b.num_classes == 2 and b.class_names == ["Sneaker", "Pullover"]
    keep = np.nonzero((ytr == 7) | (ytr == 2))[0]
    assert len(b.train) == len(keep)
    # class 7 -> 0, class 2 -> 1; images keep their pixels (scaled to [0, 1])
    for j, i in enumerate(keep):
        x, y = b.train[j]
        assert y == (0 if ytr[i] == 7 else 1)
        torch.testing.assert_close(x[0], torch.from_numpy(xtr[i]).float() / 255)
    # mean/std of the subset's train images, computed independently
    sel = xtr[keep].astype(np.float64) / 255
    assert b.mean[0] == pytest.approx(sel.mean(), abs=1e-9)
    assert b.std[0] == pytest.approx(sel.std(), abs=1e-9)


def test_class_subset_validation() -> None:
    # out of range: known only with the data set's class count, checked before any data is read
    for bad in [(0, 10), (9, 10)]:
        with pytest.raises(SpecError, match="out of range; class ids are 0..9"):
            check_data(DataSpec(name="digits", classes=bad))
        with pytest.raises(SpecError):
            load_data(DataSpec(name="digits", classes=bad))


@pytest.mark.parametrize("classes, message", [
    ((3,), "[3] is one class; a subset needs at least two classes"),
    ((), "[] is empty; a subset needs at least two classes"),
    ((3, 3), "[3, 3] repeats a class"),
    ((1, 2, 1), "[1, 2, 1] repeats a class"),
    ((-1, 2), "class ids are 0 or more"),
])
def test_class_subsets_a_spec_cannot_hold(classes: tuple[int, ...], message: str) -> None:
    """Refused by the spec itself, so a recipe and a Python caller meet it before any run exists."""
    with pytest.raises(ValidationError) as info:
        DataSpec(name="digits", classes=classes)
    assert message in str(info.value)
    assert DataSpec(name="digits", classes=(3, 4)).classes == (3, 4)


def test_missing_data_dir_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSBENCH_DATA", str(tmp_path / "empty"))
    monkeypatch.setattr("ssbench.data.sources.DEBIAN_FASHION_MNIST", tmp_path / "nope")
    (tmp_path / "missing").mkdir()
    with pytest.raises(DataNotFoundError) as info:
        load_data(DataSpec(name="fashion-mnist", data_dir=tmp_path / "missing", download=False))
    msg = str(info.value)
    assert "\n" not in msg and "apt-get install dataset-fashion-mnist" in msg and str(tmp_path / "missing") in msg
    for name in ("mnist", "cifar10"):
        with pytest.raises(DataNotFoundError) as info:
            load_data(DataSpec(name=name, download=False))
        assert "\n" not in str(info.value) and str(tmp_path / "empty" / name) in str(info.value)
    with pytest.raises(DataNotFoundError):
        load_data(DataSpec(name="imagenet", data_dir=tmp_path))
    assert isinstance(info.value, SsbenchError)


@pytest.mark.parametrize("name", ["fashion-mnist", "mnist", "digits", "cifar10"])
def test_named_data_dir_that_does_not_exist_is_refused(tmp_path: Path, name: str) -> None:
    """No fallback to another copy (Debian's, SSBENCH_DATA): the run would record a folder it never read."""
    with pytest.raises(DataNotFoundError) as info:
        load_data(DataSpec(name=name, data_dir=tmp_path / "nope"))
    msg = str(info.value)
    assert msg.startswith(f"data folder {tmp_path / 'nope'} does not exist") and "\n" not in msg
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataNotFoundError, match="is not a folder"):
        check_data(DataSpec(name=name, data_dir=tmp_path / "file"))


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist not installed")
def test_named_data_dir_without_the_files_does_not_fall_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSBENCH_DATA", raising=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError, match=f"in {tmp_path / 'empty'} "):
        load_data(DataSpec(name="fashion-mnist", data_dir=tmp_path / "empty", download=False))


def test_stratified_split_disjoint_and_sizes() -> None:
    labels = torch.arange(1000) % 4
    labels[:100] = 0  # unbalanced: class 0 has 325 rows
    tr, va = train_val_split(labels, 0.2, seed=3)
    assert len(va) == 200 and len(tr) == 800
    assert len(set(tr.tolist()) & set(va.tolist())) == 0
    assert sorted(tr.tolist() + va.tolist()) == list(range(1000))
    for c in range(4):  # proportions kept within one row per class
        assert abs(int((labels[va] == c).sum()) - 0.2 * int((labels == c).sum())) <= 1
    tr2, va2 = train_val_split(labels, 0.2, seed=3)
    assert torch.equal(va, va2)
    assert not torch.equal(va, train_val_split(labels, 0.2, seed=4)[1])
    sub = stratified_sample(labels, 10, seed=0)
    assert len(sub) == 10 and len(set(sub.tolist())) == 10


def test_digits_bundle_split_limits() -> None:
    full = load_data(DataSpec(name="digits", val_fraction=0.0))
    assert (len(full.train), len(full.test), full.image_size, full.in_channels) == (1437, 360, 8, 1)
    b = load_data(DataSpec(name="digits", val_fraction=0.25, split_seed=1, train_limit=100, test_limit=50))
    assert len(b.train) == 100 and len(b.test) == 50
    assert len(b.val) == round(100 * 0.25 / 0.75)
    # val rows never come from test, never overlap train: compare raw pixels
    def rows(ds: TensorImageDataset) -> set[bytes]:
        return {x.numpy().tobytes() + bytes([int(y)]) for x, y in zip(ds.images, ds.labels)}
    full_test = rows(full.test)
    assert not (rows(b.val) & rows(b.train)) and not (rows(b.val) & full_test) and not (rows(b.train) & full_test)
    assert rows(b.test) <= full_test
    assert torch.bincount(b.test.labels, minlength=10).tolist() == [5] * 10  # stratified


def test_resize_and_channels() -> None:
    b = load_data(DataSpec(name="digits", image_size=16, channels=3, test_limit=20))
    x, _ = b.test[0]
    assert x.shape == (3, 16, 16) and b.in_channels == 3 and b.image_size == 16 and len(b.mean) == 3
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_loader_determinism_and_global_rng() -> None:
    ds = TensorImageDataset(torch.arange(50, dtype=torch.uint8).view(50, 1, 1, 1).repeat(1, 1, 4, 4), torch.arange(50))
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = make_loader(ds, 8, shuffle=True, seed=7)
    assert len(a) == 7 and len(make_loader(ds, 8, shuffle=True, drop_last=True)) == 6
    epoch1 = torch.cat([y for _, y in a])
    epoch2 = torch.cat([y for _, y in a])
    assert torch.equal(torch.get_rng_state(), before)  # global RNG untouched
    assert sorted(epoch1.tolist()) == list(range(50))  # a permutation, each row once
    assert not torch.equal(epoch1, epoch2)  # new permutation each epoch
    b = make_loader(ds, 8, shuffle=True, seed=7)
    assert torch.equal(torch.cat([y for _, y in b]), epoch1)
    assert torch.equal(torch.cat([y for _, y in b]), epoch2)
    assert not torch.equal(torch.cat([y for _, y in make_loader(ds, 8, shuffle=True, seed=8)]), epoch1)
    # images travel with their labels and are scaled to [0, 1]
    for x, y in make_loader(ds, 8, shuffle=True, seed=7):
        torch.testing.assert_close(x[:, 0, 0, 0], y.float() / 255)
    # Subsets of a TensorImageDataset are sliced too
    sub = torch.utils.data.Subset(ds, [3, 5, 9])
    assert sorted(torch.cat([y for _, y in make_loader(sub, 2, shuffle=True)]).tolist()) == [3, 5, 9]


def test_augment_crop_flip_matches_manual() -> None:
    x = torch.rand(6, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    out = random_crop_flip(x, Augment(pad=2, flip=True), g)
    g = torch.Generator().manual_seed(0)  # replay the draws
    oy = torch.randint(0, 5, (6,), generator=g)
    ox = torch.randint(0, 5, (6,), generator=g)
    flip = torch.rand(6, generator=g) < 0.5
    padded = torch.zeros(6, 3, 12, 12)
    padded[:, :, 2:10, 2:10] = x
    for i in range(6):
        ref = padded[i, :, oy[i] : oy[i] + 8, ox[i] : ox[i] + 8]
        if flip[i]:
            ref = ref.flip(-1)
        assert torch.equal(out[i], ref)


def test_augment_only_on_train() -> None:
    b = load_data(DataSpec(name="digits", augment=True, test_limit=20))
    assert b.train.augment is not None and b.val.augment is None and b.test.augment is None


def test_unknown_dataset() -> None:
    with pytest.raises(SsbenchError, match="fashion-mnist"):
        load_data(DataSpec(name="nope"))
    assert {"fashion-mnist", "digits", "mnist", "cifar10", "cifar100", "imagenet"} <= set(DATASETS.names())


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SSBENCH_DATA", str(tmp_path))  # nothing there: falls through to Debian's files
    b = load_data(DataSpec(name="fashion-mnist", val_fraction=0.0, download=False))
    assert (len(b.train), len(b.test), b.num_classes) == (60000, 10000, 10)
    assert torch.bincount(b.train.labels).tolist() == [6000] * 10
    assert b.mean[0] == pytest.approx(0.2860, abs=1e-3) and b.std[0] == pytest.approx(0.3530, abs=1e-3)
    t = load_data(DataSpec(name="fashion-mnist", classes=(5, 6, 7, 8, 9), download=False))
    assert len(t.train) + len(t.val) == 30000 and len(t.test) == 5000 and len(t.val) == 3000
    assert set(t.test.labels.tolist()) == {0, 1, 2, 3, 4}


# -- list-file retrieval data (DeepHash layout) ----------------------------------------------------

LIST_CLASSES = 4


def make_list_folder(root: Path, *, n_db: int = 48, n_train: int = 32, n_query: int = 12, size: int = 8) -> dict:
    """A tiny DeepHash folder: 8x8 PNGs whose quadrants light up with their labels (1-2 of 4 labels
    each), train.txt (a subset of the database, as in the DeepHash lists), database.txt, test.txt.
    Returns {"pixels": {path: uint8 HxWx3}, "labels": {path: [0/1]*4}}."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    pixels, labels = {}, {}
    for i in range(n_db + n_query):
        lab = np.zeros(LIST_CLASSES, dtype=int)
        lab[rng.choice(LIST_CLASSES, size=rng.integers(1, 3), replace=False)] = 1
        img = rng.integers(0, 60, size=(size, size, 3))
        h = size // 2
        for c in np.flatnonzero(lab):
            img[(c // 2) * h:(c // 2 + 1) * h, (c % 2) * h:(c % 2 + 1) * h, :] += 180
        img = img.clip(0, 255).astype(np.uint8)
        rel = f"images/im{i:03d}.png"
        Image.fromarray(img).save(root / rel)
        pixels[rel], labels[rel] = img, lab.tolist()
    names = sorted(pixels)

    def write(file: str, rows: list[str]) -> None:
        (root / file).write_text("".join(f"{r} {' '.join(map(str, labels[r]))}\n" for r in rows))

    write("database.txt", names[:n_db])
    write("train.txt", names[:n_train])
    write("test.txt", names[n_db:])
    return {"pixels": pixels, "labels": labels, "database": names[:n_db], "train": names[:n_train], "query": names[n_db:]}


def test_list_retrieval_bundle(tmp_path: Path) -> None:
    truth = make_list_folder(tmp_path)
    b = load_data(DataSpec(name="list-retrieval", data_dir=tmp_path, image_size=8, val_fraction=0.25))
    assert b.num_classes == LIST_CLASSES and b.in_channels == 3 and b.image_size == 8
    assert b.retrieval is not None and b.test is b.retrieval.query and b.train is b.retrieval.train
    # train.txt is split into train + val: disjoint, together all of it, val = round(0.25 * 32)
    tr, va = list(b.train.indices), list(b.val.indices)
    assert len(va) == 8 and not set(tr) & set(va) and sorted(tr + va) == list(range(32))
    assert len(b.test) == 12 and len(b.retrieval.database) == 48
    # items are the PNG's pixels / 255 and the list file's label vector
    for ds, names, i in ((b.test, truth["query"], 3), (b.train, truth["train"], 5), (b.val, truth["train"], 2)):
        x, y = ds[i]
        name = names[i] if ds is b.test else names[ds.indices[i]]
        expect = torch.from_numpy(truth["pixels"][name]).permute(2, 0, 1).float() / 255
        torch.testing.assert_close(x, expect, rtol=0, atol=1e-7)
        assert y.tolist() == truth["labels"][name]
    limited = load_data(DataSpec(name="coco", data_dir=tmp_path, image_size=8, val_fraction=0.25, train_limit=10, test_limit=5))
    assert len(limited.train) == 10 and set(limited.train.indices) <= set(tr)  # limits act after the val hold-out
    assert len(limited.test) == 5


def test_list_retrieval_errors(tmp_path: Path) -> None:
    for name in ("coco", "nuswide", "imagenet100", "list-retrieval"):
        with pytest.raises(DataNotFoundError, match=r"needs --data-dir: a folder with train.txt, test.txt, database.txt"):
            load_data(DataSpec(name=name))
    make_list_folder(tmp_path)
    with pytest.raises(SpecError, match="multi-label: data.classes is not supported"):
        load_data(DataSpec(name="coco", data_dir=tmp_path, classes=(0, 1)))
    (tmp_path / "database.txt").unlink()
    with pytest.raises(DataNotFoundError, match=r"^MS-COCO: database.txt missing in "):
        load_data(DataSpec(name="coco", data_dir=tmp_path))


def test_list_retrieval_is_for_hashing_only(tmp_path: Path) -> None:
    from ssbench.specs import ModelSpec, TrainSpec
    from ssbench.store import open_store
    from ssbench.training import run_training

    make_list_folder(tmp_path / "data")
    spec = TrainSpec(kind="train", data=DataSpec(name="nuswide", data_dir=tmp_path / "data", image_size=8),
                     model=ModelSpec(name="mlp", hidden=(8,)))
    with pytest.raises(SpecError, match="multi-label retrieval data set: use --task hashing"):
        run_training(spec, open_store(f"sqlite:///{tmp_path / 'r.db'}"), quiet=True)


@pytest.mark.parametrize("name", ["digits", "fashion-mnist"])
def test_declared_class_count_is_the_data_sets_own(name):
    """NUM_CLASSES (chance levels, class-id checks before loading) against the classes the loaded set has."""
    from ssbench.data import NUM_CLASSES
    from ssbench.errors import DataNotFoundError

    try:
        bundle = load_data(DataSpec(name=name, train_limit=50, test_limit=20))
    except DataNotFoundError as err:  # fashion-mnist comes from Debian's dataset-fashion-mnist (make test installs it)
        pytest.skip(f"{name} not installed here: {err}")
    assert bundle.num_classes == len(bundle.class_names) == NUM_CLASSES[name]
