"""Atomic artifact writes: the bytes go to a temporary named after its writer (host and pid), which
is renamed over the target once complete. A writer killed mid-write (SIGKILL, out of memory) leaves
its temporary behind; one whose writer is gone is stale and removed, never one a live writer uses."""
from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Callable
from contextlib import suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

from ssbench.store.faults import ARTIFACTS_HINT, refused_write
from ssbench.store.processes import process_started_before

SUFFIX = ".tmp"
# a temporary untouched this long has no live writer, whatever its name says (a live writer
# touches it with every write): also how temporaries of other hosts and unnamed ones go
STALE_AGE_S = 24 * 3600
_WRITER = re.compile(r".+\.([A-Za-z0-9-]+)\.(\d+)" + re.escape(SUFFIX))


def _host() -> str:
    # dots would make the name ambiguous to parse back
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def temporary_for(path: Path) -> Path:
    """`best.pt` -> `best.pt.<host>.<pid>.tmp`: whose it is can be told from the name alone."""
    return path.with_name(f"{path.name}.{_host()}.{os.getpid()}{SUFFIX}")


def write_atomic(path: Path, write: Callable[[BinaryIO], None], what: str, hint: str = ARTIFACTS_HINT) -> Path:
    """`write(file)` into a temporary beside `path`, then rename it over `path`: a crash never leaves
    half a file. On failure the temporary is removed (it may hold the space the store needs next),
    and a refused write (no space, read-only, permission) is a one-line StorageError naming `what`."""
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_for(path)
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            with suppress(OSError):
                tmp.unlink(missing_ok=True)
        refused = refused_write(err, what, path, hint) if isinstance(err, Exception) else None
        if refused is not None:
            raise refused from None
        raise
    return path


def is_stale(tmp: Path, now: float | None = None) -> bool:
    """Whether no live writer holds `tmp`: its writer pid (this host only) is gone or started after
    the file was last written (a reused pid), or the file is older than STALE_AGE_S."""
    try:
        mtime = tmp.stat().st_mtime
    except OSError:
        return False
    if (now if now is not None else time.time()) - mtime > STALE_AGE_S:
        return True
    m = _WRITER.fullmatch(tmp.name)
    if m is None or m.group(1) != _host():
        return False  # another host's (or an unnamed) temporary: only its age can tell
    return not process_started_before(int(m.group(2)), datetime.fromtimestamp(mtime, timezone.utc))


def remove_stale(folder: Path) -> list[Path]:
    """Remove the stale temporaries under `folder` (recursively); the ones removed. Best effort:
    one that cannot be removed (a read-only store) stays, and nothing is raised."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    now = time.time()
    for tmp in folder.rglob(f"*{SUFFIX}"):
        if tmp.is_file() and is_stale(tmp, now):
            with suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def remove_own(folder: Path) -> None:
    """Remove this process's own temporaries under `folder`: after a failed write nothing of ours is
    still writing, and the space they hold may be what the store needs to record the failure."""
    if not folder.is_dir():
        return
    mine = f".{_host()}.{os.getpid()}{SUFFIX}"
    for tmp in folder.rglob(f"*{mine}"):
        with suppress(OSError):
            tmp.unlink()
