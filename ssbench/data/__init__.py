"""Data sets: ``load_data(DataSpec) -> DataBundle``, in-memory tensors and a fast batch loader.

Registered: ``fashion-mnist`` (default; Debian ``dataset-fashion-mnist``), ``digits`` (scikit-learn,
offline), ``mnist``, ``cifar10``, ``cifar100`` (torchvision), ``imagenet`` (folders), and the
multi-label retrieval lists ``list-retrieval`` with aliases ``coco``, ``nuswide``, ``imagenet100``
(DeepHash list files under ``--data-dir``; see :mod:`ssbench.data.lists`).

Order of operations for in-memory sets: class subset (labels remapped to 0..k-1 in the order
given) -> stratified train/val split of train (``val_fraction``, ``split_seed``; never from test)
-> ``train_limit`` (stratified, seed ``split_seed``; val is cut in proportion,
``round(train_limit * val_fraction / (1 - val_fraction))``, so a quick run does not evaluate on a
huge val set) -> ``test_limit`` (stratified, seed 0, so every run sees the same test rows).
``image_size``/``channels`` are applied per batch; ``augment`` (train split only) is a random crop
with zero padding + horizontal flip, applied per batch by :func:`make_loader`: pad 4 + flip for
CIFAR, pad 2 + flip for Fashion-MNIST, pad 2 (MNIST) / pad 1 (digits) without flips.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ssbench.data.bundle import DataBundle
from ssbench.data.folder import load_imagenet
from ssbench.data.idx import read_idx
from ssbench.data.lists import LIST_ALIASES, load_list_data
from ssbench.data.loader import TensorLoader, make_loader
from ssbench.data.sources import (
    RawData,
    data_root,
    load_cifar10,
    load_cifar100,
    load_digits,
    load_fashion_mnist,
    load_mnist,
)
from ssbench.data.splits import check_classes, class_subset, stratified_sample, train_val_split
from ssbench.data.tensor_dataset import Augment, TensorImageDataset
from ssbench.errors import DataNotFoundError, SpecError
from ssbench.registry import Registry
from ssbench.specs import DataSpec

__all__ = [
    "DATASETS", "DataBundle", "TensorImageDataset", "TensorLoader", "Augment", "check_data", "load_data", "make_loader",
    "read_idx", "data_root", "class_subset", "stratified_sample", "train_val_split",
]

# name -> loader(spec) -> DataBundle
DATASETS: Registry[Callable[[DataSpec], DataBundle]] = Registry("data set")


def _in_memory(name: str, source: Callable[[DataSpec], RawData]) -> Callable[[DataSpec], DataBundle]:
    def load(spec: DataSpec) -> DataBundle:
        return bundle_from_raw(name, source(spec), spec)

    load.__doc__ = source.__doc__
    return load


def bundle_from_raw(name: str, raw: RawData, spec: DataSpec) -> DataBundle:
    """Apply subset / split / limits / output transforms of ``spec`` to in-memory arrays."""
    if spec.channels not in (None, 1, 3):
        raise SpecError(f"data.channels must be 1 or 3, got {spec.channels}")
    native_c = raw.train_images.shape[1]
    if spec.channels == 1 and native_c == 3:
        raise SpecError(f"{name} has colour images; data.channels=1 is not supported (use 3 or leave unset)")
    if spec.augment and raw.augment is None:
        raise SpecError(f"augment is not defined for {name}; set data.augment=false")
    num_all = len(raw.class_names)
    tr_rows, tr_labels = class_subset(raw.train_labels, spec.classes, num_all)
    te_rows, te_labels = class_subset(raw.test_labels, spec.classes, num_all)
    tr_idx, va_idx = train_val_split(tr_labels, spec.val_fraction, spec.split_seed)
    if spec.train_limit is not None:
        tr_idx = tr_idx[stratified_sample(tr_labels[tr_idx], spec.train_limit, spec.split_seed)]
        if len(va_idx):
            n_val = max(1, round(spec.train_limit * spec.val_fraction / (1.0 - spec.val_fraction)))
            va_idx = va_idx[stratified_sample(tr_labels[va_idx], n_val, spec.split_seed + 1)]
    if spec.test_limit is not None:
        keep = stratified_sample(te_labels, spec.test_limit, 0)
        te_rows, te_labels = te_rows[keep], te_labels[keep]

    opts = dict(size=spec.image_size, channels=spec.channels)
    aug = raw.augment if spec.augment else None
    train = TensorImageDataset(raw.train_images[tr_rows[tr_idx]], tr_labels[tr_idx], augment=aug, **opts)
    val = TensorImageDataset(raw.train_images[tr_rows[va_idx]], tr_labels[va_idx], **opts) if len(va_idx) else None
    test = TensorImageDataset(raw.test_images[te_rows], te_labels, **opts)
    mean, std = train.channel_stats()
    names = [raw.class_names[c] for c in spec.classes] if spec.classes else list(raw.class_names)
    return DataBundle(
        name=name, train=train, val=val, test=test, num_classes=len(names),
        in_channels=train.out_channels, image_size=train.out_size, mean=mean, std=std, class_names=names,
    )


# the in-memory sets and their fixed class counts (folder and list sets define their classes on disk)
_IN_MEMORY: dict[str, tuple[Callable[[DataSpec], RawData], int]] = {
    "fashion-mnist": (load_fashion_mnist, 10), "digits": (load_digits, 10), "mnist": (load_mnist, 10),
    "cifar10": (load_cifar10, 10), "cifar100": (load_cifar100, 100),
}
for _name, (_source, _) in _IN_MEMORY.items():
    DATASETS.register(_name)(_in_memory(_name, _source))
NUM_CLASSES = {name: k for name, (_, k) in _IN_MEMORY.items()}
DATASETS.register("imagenet")(load_imagenet)
DATASETS.register("list-retrieval")(load_list_data)
for _alias, _label in LIST_ALIASES.items():
    DATASETS.register(_alias, help=f"{_label} as DeepHash list files in --data-dir (train.txt, test.txt, database.txt)")(load_list_data)



def check_data(spec: DataSpec) -> None:
    """What can be judged without reading the data: the name, a named folder, the class ids.
    Callers run it before a run row or a job claim exists (recipes: for every stage, before the
    plan runs), so a typo leaves nothing behind in the store."""
    DATASETS.get(spec.name)
    if spec.data_dir is not None and not Path(spec.data_dir).expanduser().is_dir():
        what = "is not a folder" if Path(spec.data_dir).expanduser().exists() else "does not exist"
        raise DataNotFoundError(
            f"data folder {spec.data_dir} {what} (--data-dir / data.data_dir); name the folder that holds "
            f"the {spec.name} files, or leave it unset to use the default places"
        )
    if spec.classes is not None and spec.name.lower() in NUM_CLASSES:
        check_classes(spec.classes, NUM_CLASSES[spec.name.lower()])


def load_data(spec: DataSpec) -> DataBundle:
    """Load the data set ``spec.name`` with the subset, split and transforms the spec asks for."""
    check_data(spec)
    return DATASETS.get(spec.name)(spec)
