"""Is the process that wrote something (a run row, a temporary file) still alive on this host?"""
from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path


def process_started_before(pid: int, started_at: datetime | None) -> bool:
    """Does process `pid` exist, and (where /proc tells) did it start before `started_at`? A pid
    that a newer process reuses must not keep a dead writer 'alive'."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    stat = Path(f"/proc/{pid}/stat")
    if started_at is None or not stat.exists():
        return True
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22 of proc(5): start time in clock ticks after boot
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        born = boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return True
    start = started_at if started_at.tzinfo else started_at.replace(tzinfo=timezone.utc)
    return born <= start.timestamp() + 2.0  # 2 s: clock-tick and btime rounding
