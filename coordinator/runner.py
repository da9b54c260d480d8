"""`fedcrm coordinator run`: plan a run, start the engine, follow it, clean up, write results.

The engine runs in a child process in its own session, with Flower's state
(``FLWR_HOME``) inside the run directory and Ray's temp directory a fresh short
directory under the system temp location (Ray's unix-socket paths must stay under 107
bytes). Ray's home is pointed at a directory holding ``ray_bootstrap_config.yaml``,
which stops its dashboard from probing cloud metadata. At the end Ray's logs are copied
into the run directory, the temp directory is removed and every process the run started
is stopped by PID.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedcrm._offline import OFFLINE_ENV, write_ray_bootstrap_config
from fedcrm.coordinator.processes import MARKER_VAR, stop_marked
from fedcrm.coordinator.registry import finalise_run_dir
from fedcrm.coordinator.run_config import RunConfig, RunPlan
from fedcrm.errors import CoordinatorError, RoundFailed
from fedcrm.logging import get_logger
from fedcrm.protocol import load_task_schema
from fedcrm.settings import get_settings

log = get_logger(__name__)


@dataclass
class RunResult:
    """Where a finished run's outputs are and how it ended."""

    run_id: str
    run_dir: Path
    succeeded: bool
    error: str | None
    rounds: list[dict[str, Any]]
    wall_s: float
    ray_tmp: Path | None = None  # removed by the time the result is returned


def new_run_id() -> str:
    """A sortable, unique run id."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def run_federation(
    config: RunConfig,
    partner_configs: list[Path],
    *,
    runs_dir: Path | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    timeout_s: float = 3600.0,
) -> RunResult:
    """Run one federated training on the simulation engine; never raises for a failed round."""
    if len(partner_configs) < 2:
        raise CoordinatorError("a federated run needs at least two partners (--partner … --partner …)")
    plan = plan_run(config, len(partner_configs), runs_dir)
    run_id, run_dir = plan.run_id, plan.run_dir
    plan_path = run_dir / "plan.json"
    # Partner config paths are passed through unread: the coordinator never opens them.
    partners = [str(Path(p).resolve()) for p in partner_configs]

    ray_tmp = Path(tempfile.mkdtemp(prefix="fcr-", dir=get_settings().ray_tmp_root))
    marker = uuid.uuid4().hex
    env = dict(os.environ)
    env.update(OFFLINE_ENV)
    env.update({
        MARKER_VAR: marker,
        "FLWR_HOME": str(run_dir / "flwr_home"),
        "RAY_TMPDIR": str(ray_tmp),
        "HOME": str(ray_tmp / "home"),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    })
    write_ray_bootstrap_config(ray_tmp / "home")
    started = time.monotonic()
    try:
        returncode = supervise([sys.executable, "-m", "fedcrm.coordinator.engine", str(plan_path), *partners],
                               run_dir=run_dir, env=env, log_name="engine.log", marker=marker,
                               on_event=on_event, timeout_s=timeout_s)
    finally:
        _copy_ray_logs(ray_tmp, run_dir / "ray_logs")
        shutil.rmtree(ray_tmp, ignore_errors=True)
    wall = time.monotonic() - started
    failure = run_dir / "failure.txt"
    error = failure.read_text().strip() if failure.exists() else None
    if returncode != 0 and error is None:
        error = f"engine exited with code {returncode}; see {run_dir / 'engine.log'}"
    rounds = finalise_run_dir(run_dir, succeeded=error is None, error=error, wall_s=wall)
    return RunResult(run_id, run_dir, error is None, error, rounds, wall, ray_tmp)


def plan_run(config: RunConfig, num_partners: int, runs_dir: Path | None = None) -> RunPlan:
    """Create the run directory and write its task schema and plan (shared by both engines)."""
    task = load_task_schema(config.task)
    run_id = config.run_id or new_run_id()
    run_dir = (runs_dir or get_settings().runs_dir).resolve() / run_id
    if run_dir.exists():
        raise CoordinatorError(f"{run_dir}: run directory already exists")
    run_dir.mkdir(parents=True)
    (run_dir / "task_schema.json").write_text(task.canonical_json().decode())
    plan = RunPlan(run_id=run_id, run_dir=run_dir, num_partners=num_partners,
                   task_schema_json=task.canonical_json().decode(), config=config)
    plan.save()
    return plan


def supervise(command: list[str], *, run_dir: Path, env: dict[str, str], log_name: str, marker: str,
              on_event: Callable[[dict[str, Any]], None] | None, timeout_s: float) -> int | None:
    """Run a run's driver process in its own session, follow its events, then stop everything it started.

    Every process carrying ``marker`` in its environment is stopped by PID at the end, whether
    the driver finished, failed or timed out. Returns the driver's exit code.
    """
    with (run_dir / log_name).open("w") as out:
        process = subprocess.Popen(command, cwd=run_dir, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            _follow(process, run_dir / "events.jsonl", on_event, timeout_s)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            leftover = stop_marked(marker)
            if leftover:
                log.error("processes survived SIGKILL", extra={"pids": sorted(leftover)})
    return process.returncode


def _follow(process: subprocess.Popen[bytes], events: Path, on_event: Callable[[dict[str, Any]], None] | None,
            timeout_s: float) -> None:
    position = 0
    deadline = time.monotonic() + timeout_s
    while True:
        done = process.poll() is not None
        if events.exists():
            with events.open() as handle:
                handle.seek(position)
                for line in handle:
                    if line.endswith("\n") and on_event is not None:
                        on_event(json.loads(line))
                position = handle.tell()
        if done:
            return
        if time.monotonic() > deadline:
            raise RoundFailed(0, "timeout", [], f"the run did not finish within {timeout_s:.0f} s")
        time.sleep(0.25)


def _copy_ray_logs(ray_tmp: Path, target: Path) -> None:
    for logs in ray_tmp.glob("**/session_*/logs"):
        if logs.is_dir() and not logs.is_symlink():
            shutil.copytree(logs, target / logs.parent.name, ignore=shutil.ignore_patterns("*.sock"), dirs_exist_ok=True)
