"""The engine ends its run when the coordinator process that supervises it dies (no Flower, no Ray).

A stand-in engine (the real :class:`ParentGuard`, a helper process carrying the run's
marker like Ray's processes do, a temp directory like Ray's) is supervised by a real
coordinator process through :func:`fedcrm.coordinator.runner.supervise`; the coordinator
is then killed by PID with each signal. Seconds instead of minutes: the same path the
Ray-backed kill tests take, so a regression shows here first.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fedcrm.coordinator.processes import processes_with_marker
from tests.federation import sigint_as_default

pytestmark = pytest.mark.slow

ENGINE = textwrap.dedent("""
    import os, subprocess, sys, time
    from pathlib import Path
    from fedcrm.coordinator.lifecycle import ParentGuard
    run_dir = Path(sys.argv[1])
    guard = ParentGuard(run_dir, time.monotonic()).start()
    helper = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
    (run_dir / "events.jsonl").write_text('{"event": "round_start", "round": 1, "at": "t"}\\n'
        '{"event": "evaluate", "round": 1, "loss": 0.5, "federated": {}, "partners": {}}\\n')
    (run_dir / "engine-ready").write_text(str(helper.pid))
    time.sleep(600)
""")

COORDINATOR = textwrap.dedent("""
    import os, sys, uuid
    from pathlib import Path
    from fedcrm.coordinator.lifecycle import PARENT_FD_VAR, PARENT_PID_VAR
    from fedcrm.coordinator.processes import MARKER_VAR
    from fedcrm.coordinator.runner import RunInterrupted, supervise
    run_dir, marker, tmp = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    read_end, write_end = os.pipe()
    env = dict(os.environ, **{MARKER_VAR: marker, PARENT_FD_VAR: str(read_end), PARENT_PID_VAR: str(os.getpid()),
                              "RAY_TMPDIR": tmp})
    try:
        supervise([sys.executable, "-c", sys.argv[4], str(run_dir)], run_dir=run_dir, env=env, log_name="engine.log",
                  marker=marker, on_event=None, timeout_s=600, parent_pipe=(read_end, write_end))
    except RunInterrupted as exc:
        print("interrupted by", exc.signal_name)
        sys.exit(143)
""")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=["SIGKILL", "SIGTERM", "SIGINT"])
def test_a_killed_coordinator_leaves_no_process_and_a_closed_run_directory(tmp_path: Path, sig: signal.Signals) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    plan = {"run_id": "run", "num_partners": 3, "task_schema_json": json.dumps({"name": "t"}),
            "config": {"rounds": 3, "aggregation": "secagg", "strategy": "fedavg", "architecture": "mlp"}}
    (run_dir / "plan.json").write_text(json.dumps(plan))
    fake_ray_tmp = tmp_path / "fcr-tmp"
    (fake_ray_tmp / "session_x" / "logs").mkdir(parents=True)
    (fake_ray_tmp / "session_x" / "logs" / "raylet.out").write_text("log line\n")
    marker = os.urandom(8).hex()
    coordinator = subprocess.Popen([sys.executable, "-c", COORDINATOR, str(run_dir), marker, str(fake_ray_tmp), ENGINE],
                                   preexec_fn=sigint_as_default)
    try:
        deadline = time.monotonic() + 60
        while not (run_dir / "engine-ready").exists():
            assert time.monotonic() < deadline, (run_dir / "engine.log").read_text() if (
                run_dir / "engine.log").exists() else "no engine log"
            assert coordinator.poll() is None
            time.sleep(0.1)
        assert len(processes_with_marker(marker)) == 2  # the stand-in engine and its helper
        os.kill(coordinator.pid, sig)
        coordinator.wait(timeout=60)
    finally:
        if coordinator.poll() is None:
            coordinator.kill()
    deadline = time.monotonic() + 60
    while processes_with_marker(marker) or not (run_dir / "status.json").exists():
        assert time.monotonic() < deadline, f"left: {processes_with_marker(marker)}"
        time.sleep(0.2)
    time.sleep(0.5)  # the engine writes the manifest last
    status = json.loads((run_dir / "status.json").read_text())
    assert status["outcome"] == "killed" and status["after_round"] == 1 and status["rounds_completed"] == 1
    assert not fake_ray_tmp.exists(), "Ray's temp directory was left behind"
    assert (run_dir / "ray_logs" / "session_x" / "raylet.out").exists(), "Ray's logs were not kept"
    manifest = json.loads((run_dir / "manifest.json").read_text())["files"]
    assert "status.json" in manifest and "ray_logs/session_x/raylet.out" in manifest
    if sig != signal.SIGKILL:
        assert coordinator.returncode == 143 or coordinator.returncode == 0
