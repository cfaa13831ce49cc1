"""Writes the file system or the database refused (no space, read-only, permission) as one-line
StorageErrors that say what was being written, where, and what to do."""
from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import Any

from ssbench.errors import StorageError

STORE_HINT = "free space, or point --db (SSBENCH_DB) at another store"
ARTIFACTS_HINT = "free space, or point --artifacts (SSBENCH_ARTIFACTS) elsewhere"
# SQLite result-code names (Python 3.11+: sqlite3.Error.sqlite_errorname) of refused writes
_SQLITE_FULL = "SQLITE_FULL"
_SQLITE_READONLY = "SQLITE_READONLY"
# PostgreSQL SQLSTATEs of refused writes
_PG_REFUSED = {"53100": "no space left on the database server", "25006": "the database is read-only",
               "42501": "permission denied"}


def mount_point(path: str | Path) -> Path:
    """The mount point holding `path` (its nearest existing parent that is one)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return p


def os_error_in(exc: BaseException | None) -> OSError | None:
    """The OSError behind `exc`: itself, or one in its cause / context chain (torch.save reports
    a failed write as a RuntimeError whose context is the OSError)."""
    seen = 0
    while exc is not None and seen < 16:
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def refused_write(err: BaseException, what: str, path: str | Path, hint: str = ARTIFACTS_HINT) -> StorageError | None:
    """A StorageError for a write of `what` to `path` that the file system refused; None when `err`
    is not such a refusal (a bug, an interrupt: the caller re-raises it as it is)."""
    os_err = os_error_in(err)
    if os_err is None:
        return None
    code = os_err.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        why = "no space left on" if code == errno.ENOSPC else "disk quota exceeded on"
        return StorageError(f"{why} {mount_point(path)} while writing {what} {path}; {hint}")
    if code == errno.EROFS:
        return StorageError(f"{mount_point(path)} is mounted read-only: cannot write {what} {path}; "
                            f"{hint.replace('free space, or ', '')}")
    if code in (errno.EACCES, errno.EPERM):
        return StorageError(f"permission denied writing {what} {path}; {hint.replace('free space', 'fix the permissions')}")
    return None


def _table(statement: str | None) -> str:
    m = re.search(r"\b(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+\"?(\w+)", statement or "", re.IGNORECASE)
    return f"table {m.group(1)} of " if m else ""


def refused_store_write(orig: Any, statement: str | None, store: str, db_file: Path | None,
                        read_only: str | None) -> StorageError | None:
    """A StorageError for a database write the store refused (SQLite full / read-only, PostgreSQL
    disk full / read-only / permission); None for any other database error."""
    what = _table(statement)
    name = str(getattr(orig, "sqlite_errorname", "") or "")
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    text = str(orig)
    if name == _SQLITE_FULL or (not name and "database or disk is full" in text):
        where = mount_point(db_file) if db_file is not None else "the database's disk"
        return StorageError(f"no space left on {where} while writing {what}results store {store}; {STORE_HINT}")
    if name.startswith(_SQLITE_READONLY) or (not name and "readonly database" in text):
        why = f" ({read_only})" if read_only else ""
        hint = STORE_HINT if read_only and read_only.startswith("no space") else (
            "run this where the store is writable, or point --db (SSBENCH_DB) at a writable store")
        return StorageError(f"results store {store} is read-only{why} and cannot be written; {hint}")
    if sqlstate in _PG_REFUSED:
        return StorageError(f"{_PG_REFUSED[sqlstate]} while writing {what}results store {store}; {STORE_HINT}")
    return None
