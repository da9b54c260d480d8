"""Find and stop every process a run started, by PID.

Ray leaves processes behind (``DashboardAgent``/``RuntimeEnvAgent`` ignore SIGTERM) and
some re-parent to init when their parent exits, so process-group or parent/child
tracking alone misses them. Every process of a run inherits a unique marker variable
in its environment; at the end we stop every process carrying it, by PID.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

MARKER_VAR = "FEDCRM_RUN_MARKER"


def processes_with_marker(marker: str) -> set[int]:
    """PIDs of live processes whose environment holds ``FEDCRM_RUN_MARKER=<marker>``."""
    needle = f"{MARKER_VAR}={marker}".encode()
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except (FileNotFoundError, PermissionError, ProcessLookupError, OSError):
            continue
        if needle in environ.split(b"\0"):
            found.add(int(entry.name))
    return found


def is_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is already dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, OSError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is already dead


def stop_processes(pids: set[int], grace_s: float = 5.0) -> set[int]:
    """SIGTERM, then SIGKILL after ``grace_s``; returns PIDs still alive (should be empty)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(is_alive(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        if is_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    time.sleep(0.2)
    return {p for p in pids if is_alive(p)}


def stop_marked(marker: str, grace_s: float = 5.0) -> set[int]:
    """Stop every process carrying the run's marker; repeat until none are left."""
    leftover: set[int] = set()
    for _ in range(3):
        pids = processes_with_marker(marker)
        if not pids:
            return set()
        leftover = stop_processes(pids, grace_s)
    return leftover
