"""List-file retrieval data sets (DeepHash layout): MS-COCO, NUS-WIDE, ImageNet-100, or any folder.

``--data-dir`` holds ``train.txt``, ``test.txt`` (the queries) and ``database.txt``, each line
``relative/path.jpg l1 ... lC`` with 0/1 labels, plus the images they list. Labels are multi-label
0/1 vectors (ImageNet-100's are one-hot), relevance = at least one shared label, so these sets serve
the hashing task only.

The bundle: ``train`` = train.txt less a seeded ``val_fraction`` held out as ``val`` (model
selection), then ``train_limit`` (seeded); ``test`` = the queries (``test_limit``: a seeded sample);
``retrieval`` = the three lists as used. Images are resized to ``image_size`` (default 224); inputs
are normalised with the ImageNet statistics (the images are natural photos).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from ssbench.data.bundle import DataBundle
from ssbench.data.folder import IMAGENET_MEAN, IMAGENET_STD
from ssbench.errors import DataNotFoundError, SpecError
from ssbench.specs import DataSpec

LIST_FILES = ("train.txt", "test.txt", "database.txt")
# names people know these sets by; all read the same folder layout
LIST_ALIASES = {"coco": "MS-COCO", "nuswide": "NUS-WIDE", "imagenet100": "ImageNet-100"}


def _sample(n: int, k: int, seed: int) -> list[int]:
    """Sorted ``k`` of ``range(n)`` drawn with a private generator (all of them when k >= n)."""
    if k >= n:
        return list(range(n))
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n, generator=g)[:k].tolist())


def _rows(ds: Dataset, rows: list[int]) -> Dataset:
    return ds if rows == list(range(len(ds))) else Subset(ds, rows)


def load_list_data(spec: DataSpec) -> DataBundle:
    """A DeepHash list-file folder (``--data-dir``) as a multi-label retrieval bundle."""
    from ssbench.retrieval.protocol import load_list_retrieval  # retrieval is optional weight at import time

    name = spec.name.lower()
    label = LIST_ALIASES.get(name, name)
    expected = f"{', '.join(LIST_FILES)} (lines 'image/path l1 ... lC', 0/1 labels) and the images they list"
    if spec.data_dir is None:
        raise DataNotFoundError(f"{label} needs --data-dir: a folder with {expected}")
    root = Path(spec.data_dir).expanduser()
    missing = [f for f in LIST_FILES if not (root / f).is_file()]
    if missing:
        raise DataNotFoundError(f"{label}: {', '.join(missing)} missing in {root}; expected {expected}")
    if spec.classes is not None:
        raise SpecError(f"{name} is multi-label: data.classes is not supported (edit the list files instead)")
    if spec.channels not in (None, 3):
        raise SpecError(f"{name} has colour images; data.channels must be 3 or unset")
    if spec.augment:
        raise SpecError(f"augment is not defined for {name}; set data.augment=false")
    size = spec.image_size or 224
    lists = load_list_retrieval(root, image_size=size)

    n_train = len(lists.train)
    val_rows = _sample(n_train, round(spec.val_fraction * n_train), spec.split_seed)
    held = set(val_rows)
    train_rows = [i for i in range(n_train) if i not in held]
    if spec.train_limit is not None:
        train_rows = [train_rows[i] for i in _sample(len(train_rows), spec.train_limit, spec.split_seed)]
    query_rows = list(range(len(lists.query)))
    if spec.test_limit is not None:
        query_rows = _sample(len(query_rows), spec.test_limit, 0)  # seed 0: every run sees the same queries
    if not train_rows:
        raise SpecError(f"{root / 'train.txt'} leaves no training images after val_fraction {spec.val_fraction}")

    full_train = lists.train
    lists.train = _rows(full_train, train_rows)
    lists.query = _rows(lists.query, query_rows)
    c = lists.num_classes
    return DataBundle(
        name=name, train=lists.train, val=Subset(full_train, val_rows) if val_rows else None, test=lists.query,
        num_classes=c, in_channels=3, image_size=size, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        class_names=[str(i) for i in range(c)], retrieval=lists,
    )
