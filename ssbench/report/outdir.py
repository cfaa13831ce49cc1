"""The report folder (--out), judged before anything is computed or run: `ssbench run` would
otherwise find out only after the whole grid, and a path that is a file would end in a traceback."""
from __future__ import annotations

import os
from pathlib import Path

from ssbench.errors import SpecError


def check_out_dir(out: str | Path, option: str = "--out") -> Path:
    """The folder `out` names, if it exists or can be created; creates nothing. `option` names
    where the path came from in the message (--out, or a recipe's report.out)."""
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise SpecError(f"{option} {out} is a file; name a folder")
    parent = path
    while not parent.exists():  # the nearest existing folder is where the new ones would go
        parent = parent.parent
    if not parent.is_dir():
        raise SpecError(f"{option} {out}: {parent} is a file, so the folder cannot be created there; name another folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        what = "is not writable" if parent == path else f"cannot be created: {parent} is not writable"
        raise SpecError(f"{option} {out} {what}; name a folder you can write to")
    return path
