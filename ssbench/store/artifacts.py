"""Artifact files (checkpoints, retrieval splits) under one root folder, recorded relative to it.

The database holds `checkpoints/14/best.pt`, not `/home/me/ssbench-results/checkpoints/14/best.pt`,
so a results folder (database + artifacts) can be copied or mounted elsewhere and still load. Rows
written before paths were relative hold absolute paths: they are used where the file still exists,
else their `checkpoints/<run>/<file>` tail is looked up under the current root.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path, PurePosixPath

from ssbench.errors import ArtifactError

ENV = "SSBENCH_ARTIFACTS"
CHECKPOINTS = "checkpoints"


def artifact_root(explicit: str | Path | None, db_file: Path | None, fallback: Path) -> Path:
    """Explicit folder, else SSBENCH_ARTIFACTS, else the SQLite file's folder, else `fallback`
    (SSBENCH_HOME or ./ssbench-results for server databases). Absolute, symlinks kept."""
    chosen = explicit or os.environ.get(ENV) or (db_file.parent if db_file is not None else fallback)
    return Path(chosen).expanduser().absolute()


def to_stored(path: str | Path, root: Path) -> str:
    """What the database records for `path`: posix form relative to `root` when the file lies under
    it, else the absolute path (a file elsewhere cannot move with the results folder anyway)."""
    p = Path(path).expanduser().absolute()
    for base, target in ((root.absolute(), p), (root.resolve(), p.resolve())):
        try:
            return target.relative_to(base).as_posix()
        except ValueError:
            continue
    return str(p)


def _checkpoints_tail(stored: str, run_id: int | None) -> PurePosixPath | None:
    """`checkpoints/<run>/<file...>` of an absolute path written under another root."""
    parts = PurePosixPath(Path(stored).as_posix()).parts
    if run_id is not None:
        return PurePosixPath(CHECKPOINTS, str(run_id), parts[-1])
    for i in range(len(parts) - 2, -1, -1):  # the last 'checkpoints/<digits>' pair wins
        if parts[i] == CHECKPOINTS and parts[i + 1].isdigit() and i + 2 < len(parts):
            return PurePosixPath(*parts[i:])
    return None


def resolve(stored: str | Path, root: Path, *, run_id: int | None = None) -> Path:
    """The file a recorded path means now: relative -> under `root`; absolute -> itself when it
    exists, else its `checkpoints/<run_id>/<file>` tail under `root` when that exists; else the
    path as recorded (the caller's 'missing' error then names it)."""
    p = Path(stored)
    if not p.is_absolute():
        return root / p
    if p.exists():
        return p
    tail = _checkpoints_tail(str(stored), run_id)
    if tail is not None and (root / tail).exists():
        return root / tail
    return p


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks: what the store records and checks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path, expected: str | None, name: str) -> Path:
    """`path` if its sha256 is `expected` (None: nothing recorded, not checked); else ArtifactError.

    `name` describes the file for the one-line message, e.g. "checkpoint /x/best.pt of run 3"."""
    if not path.is_file():
        raise ArtifactError(f"{name} is missing; restore the file, or pass the folder it lives in as --artifacts")
    if expected:
        actual = file_sha256(path)
        if actual != expected:
            raise ArtifactError(f"{name} changed since it was recorded (sha256 mismatch): stored {expected}, actual {actual}")
    return path
