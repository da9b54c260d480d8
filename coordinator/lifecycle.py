"""How a run's engine ends, whatever happens to the `fedcrm coordinator run` that started it.

The engine runs in its own session (so every process it spawns can be found and
stopped), which also means a signal to the operator's command never reaches it. So the
engine watches its parent two ways:

- a pipe: the parent keeps the write end open and never writes; when the parent exits
  for any reason (SIGTERM, SIGINT, SIGKILL, a crash) the kernel closes it and the engine's
  read returns EOF;
- ``PR_SET_PDEATHSIG`` (Linux ``prctl`` through ctypes): the kernel sends the engine
  SIGUSR2 when its parent dies; the engine treats it like EOF on the pipe. Not SIGTERM:
  Ray's driver installs its own SIGTERM handler, which ends the process at once (measured:
  the run was left without status or manifest).

Either way the engine *abandons* the run: it stops new writes to the run directory,
stops every process carrying the run's marker (Ray's included), copies Ray's logs, removes
Ray's temp directory, records the run as ``killed`` after its last completed round and
writes the manifest, then exits. The same :func:`finish_run` ends a completed or failed
run, so every ending leaves a finalised run directory and no process behind.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from fedcrm.coordinator.processes import MARKER_VAR, stop_marked
from fedcrm.coordinator.recorder import stop_writes
from fedcrm.coordinator.registry import finalise_run_dir, write_manifest
from fedcrm.logging import get_logger

log = get_logger(__name__)

PARENT_FD_VAR = "FEDCRM_PARENT_FD"
PARENT_PID_VAR = "FEDCRM_PARENT_PID"
PR_SET_PDEATHSIG = 1
KILLED_EXIT = 3
PARENT_DEATH_SIGNAL = signal.SIGUSR2


def set_parent_death_signal(sig: int) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def copy_ray_logs(ray_tmp: Path, target: Path) -> None:
    """Copy Ray's session logs (not its sockets) into the run directory."""
    for logs in ray_tmp.glob("**/session_*/logs"):
        if logs.is_dir() and not logs.is_symlink():
            shutil.copytree(logs, target / logs.parent.name, ignore=shutil.ignore_patterns("*.sock"),
                            dirs_exist_ok=True)


def finish_run(run_dir: Path, *, outcome: str, error: str | None, wall_s: float,
               marker: str | None, ray_tmp: Path | None) -> None:
    """Finalise the run directory, then stop the run's processes, keep Ray's logs and remove its temp directory.

    The status and manifest are written first: if stopping Ray takes this process down
    with it, the run directory is already closed.
    """
    finalise_run_dir(run_dir, succeeded=outcome == "completed", error=error, wall_s=wall_s, outcome=outcome)
    if marker:
        leftover = stop_marked(marker, grace_s=3.0)
        if leftover:
            log.error("processes survived SIGKILL", extra={"pids": sorted(leftover)})
    if ray_tmp is not None and ray_tmp.exists():
        try:
            copy_ray_logs(ray_tmp, run_dir / "ray_logs")
        except OSError as exc:  # a log vanishing mid-copy must not keep the temp dir alive
            log.warning("could not copy Ray logs", extra={"error": str(exc)})
        shutil.rmtree(ray_tmp, ignore_errors=True)
    write_manifest(run_dir)


class ParentGuard:
    """Abandon the run cleanly when the process that started the engine goes away."""

    def __init__(self, run_dir: Path, started: float) -> None:
        self.run_dir = run_dir
        self.started = started
        self._lock = threading.Lock()
        self._finishing = False

    def start(self) -> ParentGuard:
        """Watch the inherited pipe (if any) and the parent-death signal."""
        fd = os.environ.get(PARENT_FD_VAR)
        if fd is not None:
            threading.Thread(target=self._watch_pipe, args=(int(fd),), daemon=True, name="parent-pipe").start()
        signal.signal(PARENT_DEATH_SIGNAL, self._on_signal)
        set_parent_death_signal(PARENT_DEATH_SIGNAL)
        parent = os.environ.get(PARENT_PID_VAR)
        if parent is not None and os.getppid() != int(parent):
            self.abandon("the coordinator exited before the engine started")  # died before prctl took effect
        return self

    def finishing(self) -> bool:
        """Claim the ending for the normal path; False if the run is already being abandoned."""
        with self._lock:
            if self._finishing:
                return False
            self._finishing = True
            return True

    def _watch_pipe(self, fd: int) -> None:
        while True:
            try:
                data = os.read(fd, 1)
            except InterruptedError:
                continue
            except OSError:
                data = b""
            if not data:
                self.abandon("the coordinator process went away")
                return

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        threading.Thread(target=self.abandon, args=(f"signal {signal.Signals(signum).name}",), daemon=False).start()

    def abandon(self, why: str) -> None:
        """Stop everything and record the run as killed; never returns if it does the ending."""
        if not self.finishing():
            return
        log.warning("abandoning the run", extra={"reason": why, "run_dir": str(self.run_dir)})
        stop_writes()
        tmp = os.environ.get("RAY_TMPDIR")
        try:
            finish_run(self.run_dir, outcome="killed", error=f"killed: {why}", wall_s=time.monotonic() - self.started,
                       marker=os.environ.get(MARKER_VAR), ray_tmp=Path(tmp) if tmp else None)
        finally:
            os._exit(KILLED_EXIT)
