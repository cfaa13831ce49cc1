"""Reader for the IDX format of (Fashion-)MNIST, with or without gzip.

Written against the format description on Yann LeCun's MNIST page: a big-endian magic number
``0x00 0x00 <dtype code> <ndim>``, then ``ndim`` big-endian uint32 sizes, then the data.
We read it ourselves (gzip + numpy) so the Debian files load without torchvision's download code.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from ssbench.errors import DataNotFoundError

# IDX dtype codes -> big-endian numpy dtypes.
_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Return the array stored in an IDX file (``.gz`` is decompressed on the fly)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DataNotFoundError(f"{path} is not an IDX file (bad magic number); re-download it")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_DTYPES[raw[2]])
    count = int(np.prod(shape)) if shape else 1
    if len(raw) - header < count * dtype.itemsize:
        raise DataNotFoundError(f"{path} is truncated ({len(raw)} bytes for shape {shape}); re-download it")
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


IDX_STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def find_idx_files(folder: Path) -> dict[str, Path] | None:
    """The four (Fashion-)MNIST IDX files in ``folder`` (plain or .gz), or None if any is missing."""
    found: dict[str, Path] = {}
    for key, stem in IDX_STEMS.items():
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                found[key] = folder / name
                break
        else:
            return None
    return found
