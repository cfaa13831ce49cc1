"""Where each data set's raw arrays come from (files on disk, scikit-learn, torchvision's downloads).

Each source returns :class:`RawData` (uint8/float tensors N x C x H x W plus labels) for in-memory
sets; ``imagenet`` is a folder set handled in :mod:`ssbench.data.folder`.
"""
from __future__ import annotations

import os
import pickle
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


# name -> (our folder, torchvision's class and folder name, other places looked)
IDX_SETS: dict[str, tuple[str, str, tuple[Path, ...]]] = {
    "fashion-mnist": ("fashion-mnist", "FashionMNIST", (DEBIAN_FASHION_MNIST,)),
    "mnist": ("mnist", "MNIST", ()),
}


def load_fashion_mnist(spec: DataSpec) -> RawData:
    """Fashion-MNIST (Xiao et al. 2017) from IDX files: --data-dir, $SSBENCH_DATA, Debian's package, download."""
    folder, tv_name, extra = IDX_SETS["fashion-mnist"]
    files = _load_idx_set(
        spec, folder=folder, tv_name=tv_name, tv_class=tv_name, extra=extra,
        hint="run `sudo apt-get install dataset-fashion-mnist` or ",
    )
    # clothes are left/right symmetric, so flips are label-preserving; pad 2 at 28 px ~ pad 4 at 32 px
    return _idx_raw(files, FASHION_MNIST_CLASSES, Augment(pad=2, flip=True))


def load_mnist(spec: DataSpec) -> RawData:
    """MNIST digits (IDX files; torchvision download where a network exists)."""
    folder, tv_name, extra = IDX_SETS["mnist"]
    files = _load_idx_set(spec, folder=folder, tv_name=tv_name, tv_class=tv_name, extra=extra, hint="")
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


# ---------------------------------------------------------------- CIFAR (python batches)

@dataclass(frozen=True)
class CifarLayout:
    """The files of one CIFAR set in its "python version" archive (cs.toronto.edu/~kriz/cifar.html)."""

    folder: str  # ours, under the data root
    subdir: str  # the archive's folder
    train: tuple[str, ...]
    test: str
    meta: str
    labels: bytes  # key of the labels in each batch
    names: bytes  # key of the class names in the meta file
    tv_class: str  # torchvision's class, which downloads and unpacks the archive

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train, self.test, self.meta)


CIFAR10 = CifarLayout("cifar10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
                      "batches.meta", b"labels", b"label_names", "CIFAR10")
CIFAR100 = CifarLayout("cifar100", "cifar-100-python", ("train",), "test", "meta", b"fine_labels",
                       b"fine_label_names", "CIFAR100")


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles dicts of bytes, lists and numpy arrays and nothing else: a batch file that asks for
    any other global (code to run) is refused, not executed."""

    _ALLOWED = frozenset({
        ("_codecs", "encode"),  # bytes, as Python 3 pickles them at protocol 2
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    })

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a CIFAR batch")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            obj = _BatchUnpickler(f, encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001  (truncated, foreign or hostile file: all the same to the user)
        raise DataNotFoundError(f"{path} is not a CIFAR python batch ({_one_line(exc)}); unpack the python "
                                "version of the archive (cifar-*-python.tar.gz) there") from None
    if not isinstance(obj, dict):
        raise DataNotFoundError(f"{path} is not a CIFAR python batch (a dict expected, got {type(obj).__name__})")
    return obj


def _cifar_batch(path: Path, layout: CifarLayout) -> tuple[Tensor, Tensor]:
    """(N x 3 x 32 x 32 uint8 images, N int64 labels) of one batch file."""
    batch = _unpickle(path)
    data, labels = batch.get(b"data"), batch.get(layout.labels)
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype != np.uint8:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataNotFoundError(f"{path}: b'data' should be N x 3072 uint8, got {got}")
    if labels is None or len(labels) != len(data):
        n = "none" if labels is None else len(labels)
        raise DataNotFoundError(f"{path}: {len(data)} images but {n} {layout.labels.decode()}")
    # rows hold the red, green then blue 32 x 32 planes: N x C x H x W as it is
    images = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32).copy())
    return images, torch.as_tensor(np.asarray(labels, dtype=np.int64))


def find_cifar(spec: DataSpec, layout: CifarLayout) -> Path | None:
    """The folder holding every file of `layout` (the named or default folder itself, or its
    archive subfolder ``cifar-10-batches-py`` / ``cifar-100-python``); None when there is none."""
    base = dataset_dir(spec, layout.folder)
    for c in (base, base / layout.subdir):
        if all((c / f).is_file() for f in layout.files):
            return c
    return None


def _cifar_missing(base: Path, layout: CifarLayout) -> str:
    """What a folder holding some of the files lacks, for the error ("" when neither has any)."""
    for c in (base / layout.subdir, base):
        present = [f for f in layout.files if (c / f).is_file()]
        if present:
            return f"; {c} lacks {', '.join(f for f in layout.files if f not in present)}"
    return ""


def _load_cifar(spec: DataSpec, layout: CifarLayout) -> RawData:
    folder = find_cifar(spec, layout)
    base = dataset_dir(spec, layout.folder)
    why = "download=false"
    if folder is None and spec.download:
        try:  # torchvision fetches the archive (md5-checked) and unpacks it into base/<subdir>
            import torchvision.datasets as tvd

            getattr(tvd, layout.tv_class)(str(base), train=True, download=True)
        except Exception as exc:  # noqa: BLE001  (no network, proxy, server down: all the same to the user)
            why = f"download failed: {_one_line(exc)}"
        folder = find_cifar(spec, layout)
    if folder is None:
        raise DataNotFoundError(
            f"{layout.folder} not found ({why}){_cifar_missing(base, layout)}; put the python version's files "
            f"{', '.join(layout.files)} ({layout.subdir.replace('-batches-py', '-python')}.tar.gz unpacked) in "
            f"{base / layout.subdir} (or pass --data-dir / set SSBENCH_DATA)"
        )
    parts = [_cifar_batch(folder / f, layout) for f in layout.train]
    train_x, train_y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    test_x, test_y = _cifar_batch(folder / layout.test, layout)
    raw_names = _unpickle(folder / layout.meta).get(layout.names)
    if not isinstance(raw_names, list) or not raw_names:
        raise DataNotFoundError(f"{folder / layout.meta} has no {layout.names.decode()} list")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in raw_names]
    for split, y in (("train", train_y), ("test", test_y)):
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(names)):
            raise DataNotFoundError(f"{folder}: {split} labels span {int(y.min())}..{int(y.max())}, "
                                    f"but {layout.meta} names {len(names)} classes")
    return RawData(train_x, train_y, test_x, test_y, names, Augment(pad=4, flip=True))  # the standard CIFAR recipe (He et al. 2016)


def load_cifar10(spec: DataSpec) -> RawData:
    """CIFAR-10 from its python batches (data_batch_1..5, test_batch, batches.meta): --data-dir or
    $SSBENCH_DATA/cifar10, the folder itself or its cifar-10-batches-py; download where possible."""
    return _load_cifar(spec, CIFAR10)


def load_cifar100(spec: DataSpec) -> RawData:
    """CIFAR-100, fine labels, from its python batches (train, test, meta): --data-dir or
    $SSBENCH_DATA/cifar100, the folder itself or its cifar-100-python; download where possible."""
    return _load_cifar(spec, CIFAR100)


def on_disk(spec: DataSpec) -> bool | None:
    """Whether a downloadable data set's files are found where its loader looks; None for the sets
    that are never downloaded (scikit-learn's digits, folder and list sets) and unknown names."""
    name = spec.name.lower()
    if name in ("cifar10", "cifar100"):
        return find_cifar(spec, CIFAR10 if name == "cifar10" else CIFAR100) is not None
    if name in IDX_SETS:
        folder, tv_name, extra = IDX_SETS[name]
        return any(find_idx_files(c) is not None for c in _idx_candidates(spec, folder, tv_name, extra))
    return None


SourceFn = Callable[[DataSpec], RawData]
