"""`fedcrm down` signals only what `up` started, even when a recorded PID now belongs to someone else."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

from fedcrm.coordinator import local_stack
from fedcrm.coordinator.processes import MARKER_VAR


def test_down_leaves_a_stranger_holding_a_dead_parts_pid_alone(tmp_path: Path) -> None:
    # A part that died earlier left its PID free; the kernel gave it to another process (PIDs wrap at
    # pid_max). Here the stranger's PID is written into the state file directly.
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    marker = uuid.uuid4().hex
    part = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                            env={MARKER_VAR: marker, "PATH": "/usr/bin:/bin"})
    try:
        parts = [{"name": "superlink", "pid": part.pid, "marker": marker, "listens": "127.0.0.1:1", "log": "x"},
                 {"name": "partner-A", "pid": stranger.pid, "marker": uuid.uuid4().hex, "listens": "", "log": "y"}]
        (tmp_path / local_stack.STATE_FILE).write_text(json.dumps({"parts": parts}))
        survivors = local_stack.down(tmp_path, grace_s=5.0)
        assert survivors == set()
        assert part.wait(timeout=10) is not None  # the real part was stopped
        assert stranger.poll() is None, "down signalled a process it did not start"
        assert not (tmp_path / local_stack.STATE_FILE).exists()
    finally:
        for p in (stranger, part):
            if p.poll() is None:
                p.kill()
            p.wait()
