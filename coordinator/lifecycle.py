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
records the run as ``killed`` after its last completed round, then hands the rest to a
separate *reaper* process (:func:`start_reaper`: Ray's driver code may end the engine as
soon as Ray's raylet stops), which stops every process carrying the run's marker (Ray's
and the engine included), copies Ray's logs, removes Ray's temp directory and writes the
manifest. The same :func:`finish_run` ends a completed or failed
run, so every ending leaves a finalised run directory and no process behind.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from fedcrm.coordinator.processes import MARKER_VAR, is_alive, stop_marked
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
    stop_and_clear(run_dir, marker, ray_tmp)
    write_manifest(run_dir)


def stop_and_clear(run_dir: Path, marker: str | None, ray_tmp: Path | None) -> None:
    """Stop every process carrying ``marker``, keep Ray's logs in the run directory, remove Ray's temp directory."""
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
            finalise_run_dir(self.run_dir, succeeded=False, error=f"killed: {why}",
                             wall_s=time.monotonic() - self.started, outcome="killed")
            reaper = start_reaper(self.run_dir, os.environ.get(MARKER_VAR), Path(tmp) if tmp else None)
            reaper.wait()
        finally:
            os._exit(KILLED_EXIT)


#: The reaper's PID, written into the run directory while it ends an abandoned run.
REAPER_PID_FILE = "reaper.pid"


def start_reaper(run_dir: Path, marker: str | None, ray_tmp: Path | None) -> subprocess.Popen[bytes]:
    """Hand the rest of an abandoned run's ending to a separate process, which outlives the engine.

    Once Ray's raylet is stopped, Ray's driver code still running in the engine's main
    thread ends the engine process at once ("Exiting because the Raylet IPC connection
    failed and the local Raylet is dead", measured in CI): an ending done in the engine
    itself was cut off before Ray's temp directory was removed. The reaper carries the
    run's ``FLWR_HOME`` (so it counts as one of the run's processes) but not its marker (so
    stopping the marked processes does not stop it).
    """
    env = {k: v for k, v in os.environ.items() if k not in (MARKER_VAR, PARENT_FD_VAR, PARENT_PID_VAR)}
    command = [sys.executable, "-m", "fedcrm.coordinator.lifecycle", str(run_dir), marker or "",
               str(ray_tmp) if ray_tmp else ""]
    return subprocess.Popen(command, env=env, start_new_session=True, stdin=subprocess.DEVNULL)


def wait_for_reaper(run_dir: Path, timeout_s: float) -> bool:
    """Wait until an abandoned run's reaper (if one was started) has ended; False if it is still running."""
    path = run_dir / REAPER_PID_FILE
    deadline = time.monotonic() + timeout_s
    while path.exists():
        try:
            pid = int(path.read_text())
        except (OSError, ValueError):
            return True  # removed (or being written) as we looked
        if not is_alive(pid):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _reap(run_dir: Path, marker: str | None, ray_tmp: Path | None) -> None:
    """The reaper's work: stop the run's processes, keep Ray's logs, remove its temp dir, write the manifest.

    Its PID file is written first, before it stops the engine (whose end the coordinator then
    waits past, see :func:`wait_for_reaper`), and removed last: written by the engine after
    starting the reaper, it could outlive a reaper that had already finished.
    """
    (run_dir / REAPER_PID_FILE).write_text(f"{os.getpid()}\n")
    try:
        stop_and_clear(run_dir, marker, ray_tmp)
    finally:
        (run_dir / REAPER_PID_FILE).unlink(missing_ok=True)
        write_manifest(run_dir)


if __name__ == "__main__":
    _reap(Path(sys.argv[1]), sys.argv[2] or None, Path(sys.argv[3]) if sys.argv[3] else None)
