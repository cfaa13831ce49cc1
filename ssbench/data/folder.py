"""ImageNet-style folder data sets (``data_dir/train/<class>/*.jpg``, ``data_dir/val/<class>/*.jpg``)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from ssbench.data.splits import class_subset, stratified_sample, train_val_split
from ssbench.errors import DataNotFoundError
from ssbench.specs import DataSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _Relabel(Dataset):
    """A Subset whose labels go through a lookup table (class subsets of an ImageFolder)."""

    def __init__(self, base: Dataset, index: torch.Tensor, labels: torch.Tensor) -> None:
        self.base, self.index, self.labels = base, index, labels

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        x, _ = self.base[int(self.index[i])]
        return x, int(self.labels[i])


def load_imagenet(spec: DataSpec):
    """ImageFolder at data_dir/train and data_dir/val; resize + centre crop to image_size (default 224).

    mean/std are the usual ImageNet statistics (a pass over 1.28M JPEGs to recompute them is not worth it).
    With augment=True the train split uses RandomResizedCrop + horizontal flip (per item, torchvision).
    """
    from ssbench.data import DataBundle  # late import: avoid a cycle
    import torchvision.datasets as tvd
    import torchvision.transforms as T

    if spec.data_dir is None:
        raise DataNotFoundError("imagenet needs --data-dir pointing at a folder with train/ and val/ class folders")
    root = Path(spec.data_dir).expanduser()
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DataNotFoundError(f"imagenet: {root / split} is missing; expected {root}/train/<class>/* and {root}/val/<class>/*")
    size = spec.image_size or 224
    channels = spec.channels or 3
    tail = [T.ToTensor()]
    if channels == 1:
        tail.insert(0, T.Grayscale(1))
    eval_tf = T.Compose([T.Resize(round(size * 256 / 224)), T.CenterCrop(size), *tail])
    train_tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), *tail]) if spec.augment else eval_tf
    train_aug = tvd.ImageFolder(str(root / "train"), transform=train_tf)
    train_plain = tvd.ImageFolder(str(root / "train"), transform=eval_tf)
    test = tvd.ImageFolder(str(root / "val"), transform=eval_tf)
    if train_plain.classes != test.classes:
        raise DataNotFoundError(f"imagenet: class folders of {root}/train and {root}/val differ")
    num_all = len(train_plain.classes)

    def subset(ds: tvd.ImageFolder) -> tuple[torch.Tensor, torch.Tensor]:
        return class_subset(torch.as_tensor(ds.targets, dtype=torch.long), spec.classes, num_all)

    tr_rows, tr_labels = subset(train_plain)
    te_rows, te_labels = subset(test)
    tr_idx, va_idx = train_val_split(tr_labels, spec.val_fraction, spec.split_seed)
    if spec.train_limit is not None:
        tr_idx = tr_idx[stratified_sample(tr_labels[tr_idx], spec.train_limit, spec.split_seed)]
    if spec.test_limit is not None:
        keep = stratified_sample(te_labels, spec.test_limit, 0)
        te_rows, te_labels = te_rows[keep], te_labels[keep]
    names = [train_plain.classes[c] for c in spec.classes] if spec.classes else list(train_plain.classes)
    mean = IMAGENET_MEAN if channels == 3 else (sum(IMAGENET_MEAN) / 3,)
    std = IMAGENET_STD if channels == 3 else (sum(IMAGENET_STD) / 3,)
    return DataBundle(
        name="imagenet",
        train=_Relabel(train_aug, tr_rows[tr_idx], tr_labels[tr_idx]),
        val=_Relabel(train_plain, tr_rows[va_idx], tr_labels[va_idx]) if len(va_idx) else None,
        test=_Relabel(test, te_rows, te_labels),
        num_classes=len(names),
        in_channels=channels,
        image_size=size,
        mean=tuple(mean),
        std=tuple(std),
        class_names=names,
    )
