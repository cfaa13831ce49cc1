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

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
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


# -- list files (MS-COCO, NUS-WIDE, ImageNet-100) ------------------------------------------------

def read_list_file(path: str | Path) -> tuple[list[str], Tensor]:
    """Lines ``path l1 ... lC`` (0/1) -> (paths, labels uint8 N x C)."""
    paths, rows = [], []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            rows.append([int(v) for v in parts[1:]])
        except ValueError as e:
            raise DataNotFoundError(f"{path}:{n}: labels must be 0/1 integers after the image path") from e
        paths.append(parts[0])
    if not rows:
        raise DataNotFoundError(f"list file {path} has no entries")
    width = {len(r) for r in rows}
    if len(width) != 1:
        raise DataNotFoundError(f"list file {path}: lines have different label counts {sorted(width)}")
    return paths, torch.tensor(rows, dtype=torch.uint8)


class ListFileDataset(Dataset):
    """Images listed in a DeepHash list file; yields (float C x H x W in [0, 1], 0/1 label vector)."""

    def __init__(self, root: str | Path, list_file: str | Path, *, image_size: int = 224) -> None:
        self.root = Path(root)
        self.list_file = Path(list_file)
        self.paths, self.label_matrix = read_list_file(list_file)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        from PIL import Image

        p = self.root / self.paths[i]
        if not p.exists():
            raise DataNotFoundError(f"image {p} listed but missing; fix the list file or the data root")
        img = Image.open(p).convert("RGB").resize((self.image_size, self.image_size), Image.BILINEAR)
        x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(self.image_size, self.image_size, 3)
        return x.permute(2, 0, 1).float().div(255.0), self.label_matrix[i].float()


@dataclass
class ListRetrievalData:
    """The three lists of a DeepHash folder; each a ListFileDataset or a Subset of one (val carved
    out of train, ``train_limit`` / ``test_limit``)."""

    train: Dataset
    query: Dataset
    database: Dataset

    @property
    def num_classes(self) -> int:
        return int(list_rows(self.database)[0].label_matrix.shape[1])


def list_rows(ds: Dataset) -> tuple[ListFileDataset, list[int]]:
    """(the ListFileDataset under ``ds``, the rows of its list file that ``ds`` serves, in order)."""
    index: list[int] | None = None
    while isinstance(ds, Subset):
        index = list(ds.indices) if index is None else [int(ds.indices[i]) for i in index]
        ds = ds.dataset
    if not isinstance(ds, ListFileDataset):
        raise TypeError(f"{type(ds).__name__} is not a list-file data set")
    return ds, [int(i) for i in (range(len(ds)) if index is None else index)]


def load_list_retrieval(root: str | Path, *, image_size: int = 224, images_root: str | Path | None = None) -> ListRetrievalData:
    """``<root>/{train,test,database}.txt`` -> datasets (test.txt are the queries)."""
    root = Path(root)
    missing = [n for n in ("train.txt", "test.txt", "database.txt") if not (root / n).exists()]
    if missing:
        raise DataNotFoundError(
            f"retrieval lists {', '.join(missing)} missing in {root}; put DeepHash-style list files there "
            "(each line: image path then C 0/1 labels)"
        )
    img_root = Path(images_root) if images_root is not None else root
    sets = {n: ListFileDataset(img_root, root / f"{n}.txt", image_size=image_size) for n in ("train", "test", "database")}
    widths = {int(d.label_matrix.shape[1]) for d in sets.values()}
    if len(widths) != 1:
        raise DataNotFoundError(f"list files in {root} disagree on the number of labels: {sorted(widths)}")
    return ListRetrievalData(sets["train"], sets["test"], sets["database"])
