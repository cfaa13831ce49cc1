"""Where each data set's raw arrays come from (files on disk, scikit-learn, torchvision).

Each source returns :class:`RawData` (uint8/float tensors N x C x H x W plus labels) for in-memory
sets; ``imagenet`` is a folder set handled in :mod:`ssbench.data.folder`.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ssbench.data.idx import IDX_STEMS, find_idx_files, read_idx
from ssbench.data.tensor_dataset import Augment
from ssbench.errors import DataNotFoundError
from ssbench.specs import DataSpec

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@dataclass
class RawData:
    train_images: Tensor  # N x C x H x W, uint8 (0..255) or float ([0, 1])
    train_labels: Tensor  # int64
    test_images: Tensor
    test_labels: Tensor
    class_names: list[str]
    augment: Augment | None  # what augment=True means for this set (None: not defined)


def data_root() -> Path:
    """$SSBENCH_DATA, else ~/.cache/ssbench/data: where downloads go."""
    env = os.environ.get("SSBENCH_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ssbench" / "data"


def dataset_dir(spec: DataSpec, folder: str) -> Path:
    return Path(spec.data_dir).expanduser() if spec.data_dir is not None else data_root() / folder


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


# ---------------------------------------------------------------- IDX sets (fashion-mnist, mnist)

def _idx_candidates(spec: DataSpec, folder: str, tv_name: str, extra: tuple[Path, ...]) -> list[Path]:
    # a named folder is the only place looked: a copy found elsewhere would be read while the run
    # records the named folder
    if spec.data_dir is not None:
        bases = [Path(spec.data_dir).expanduser()]
    else:
        bases = []
        if os.environ.get("SSBENCH_DATA"):
            bases.append(Path(os.environ["SSBENCH_DATA"]).expanduser() / folder)
        bases.extend(extra)
        bases.append(data_root() / folder)
    out: list[Path] = []
    for b in bases:  # also torchvision's layout <root>/<Name>/raw, where its download puts the files
        for c in (b, b / tv_name / "raw"):
            if c not in out:
                out.append(c)
    return out


def _load_idx_set(
    spec: DataSpec, *, folder: str, tv_name: str, tv_class: str, extra: tuple[Path, ...], hint: str
) -> dict[str, Path]:
    candidates = _idx_candidates(spec, folder, tv_name, extra)
    for c in candidates:
        files = find_idx_files(c)
        if files is not None:
            return files
    target = dataset_dir(spec, folder)
    why = "download=false"
    if spec.download:
        try:
            import torchvision.datasets as tvd

            for train in (True, False):
                getattr(tvd, tv_class)(str(target), train=train, download=True)
        except Exception as exc:  # no network, proxy, server down: all the same to the user
            why = f"download failed: {_one_line(exc)}"
        files = find_idx_files(target / tv_name / "raw")
        if files is not None:
            return files
    names = ", ".join(s + "(.gz)" for s in IDX_STEMS.values())
    raise DataNotFoundError(
        f"{folder} not found ({why}); {hint}put {names} in {target} (or pass --data-dir / set SSBENCH_DATA)"
    )


def _idx_raw(files: dict[str, Path], class_names: list[str], augment: Augment) -> RawData:
    def images(p: Path) -> Tensor:
        a = read_idx(p)
        if a.ndim != 3:
            raise DataNotFoundError(f"{p} holds shape {a.shape}, expected N x H x W images")
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.uint8)).unsqueeze(1)

    def labels(p: Path) -> Tensor:
        return torch.from_numpy(read_idx(p).astype(np.int64))

    raw = RawData(
        images(files["train_images"]), labels(files["train_labels"]),
        images(files["test_images"]), labels(files["test_labels"]),
        class_names, augment,
    )
    for split in ("train", "test"):
        if len(getattr(raw, f"{split}_images")) != len(getattr(raw, f"{split}_labels")):
            raise DataNotFoundError(f"{split} images and labels differ in count in {files[split + '_images'].parent}")
    return raw


def load_fashion_mnist(spec: DataSpec) -> RawData:
    """Fashion-MNIST (Xiao et al. 2017) from IDX files: --data-dir, $SSBENCH_DATA, Debian's package, download."""
    files = _load_idx_set(
        spec, folder="fashion-mnist", tv_name="FashionMNIST", tv_class="FashionMNIST",
        extra=(DEBIAN_FASHION_MNIST,), hint="run `sudo apt-get install dataset-fashion-mnist` or ",
    )
    # clothes are left/right symmetric, so flips are label-preserving; pad 2 at 28 px ~ pad 4 at 32 px
    return _idx_raw(files, FASHION_MNIST_CLASSES, Augment(pad=2, flip=True))


def load_mnist(spec: DataSpec) -> RawData:
    """MNIST digits (IDX files; torchvision download where a network exists)."""
    files = _load_idx_set(spec, folder="mnist", tv_name="MNIST", tv_class="MNIST", extra=(), hint="")
    # no flips: mirrored digits are not digits
    return _idx_raw(files, [str(i) for i in range(10)], Augment(pad=2, flip=False))


# ---------------------------------------------------------------- digits (scikit-learn, offline)

def load_digits(spec: DataSpec) -> RawData:
    """scikit-learn's bundled 8x8 digits (1797 images); fixed stratified 80/20 train/test split (seed 0)."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    d = sk_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]  # values are 0..16
    y = d.target.astype(np.int64)
    idx_tr, idx_te = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=0)
    idx_tr, idx_te = np.sort(idx_tr), np.sort(idx_te)
    t = torch.from_numpy
    return RawData(
        t(x[idx_tr]), t(y[idx_tr]), t(x[idx_te]), t(y[idx_te]),
        [str(i) for i in range(10)], Augment(pad=1, flip=False),
    )


# ---------------------------------------------------------------- CIFAR (torchvision)

def _load_cifar(spec: DataSpec, *, folder: str, tv_class: str) -> RawData:
    import torchvision.datasets as tvd

    root = dataset_dir(spec, folder)
    sets = []
    for train in (True, False):
        try:
            sets.append(getattr(tvd, tv_class)(str(root), train=train, download=False))
            continue
        except Exception as exc:  # not there yet
            err = exc
        if not spec.download:
            raise DataNotFoundError(
                f"{folder} not found in {root} (download=false); put torchvision's {tv_class} files there "
                f"or allow download"
            ) from err
        try:
            sets.append(getattr(tvd, tv_class)(str(root), train=train, download=True))
        except Exception as exc:
            raise DataNotFoundError(
                f"{folder} not found in {root} and download failed ({_one_line(exc)}); "
                f"fetch torchvision's {tv_class} on a machine with a network and copy it into {root}"
            ) from exc
    tr, te = sets

    def images(ds) -> Tensor:  # N x H x W x C uint8 -> N x C x H x W
        return torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()

    return RawData(
        images(tr), torch.as_tensor(tr.targets, dtype=torch.long),
        images(te), torch.as_tensor(te.targets, dtype=torch.long),
        list(tr.classes), Augment(pad=4, flip=True),  # the standard CIFAR recipe (He et al. 2016)
    )


def load_cifar10(spec: DataSpec) -> RawData:
    """CIFAR-10 via torchvision (download where possible)."""
    return _load_cifar(spec, folder="cifar10", tv_class="CIFAR10")


def load_cifar100(spec: DataSpec) -> RawData:
    """CIFAR-100 (fine labels) via torchvision (download where possible)."""
    return _load_cifar(spec, folder="cifar100", tv_class="CIFAR100")


SourceFn = Callable[[DataSpec], RawData]
