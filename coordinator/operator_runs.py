"""Start, stop and resume runs for the operator API: each run is a `fedcrm coordinator run` child process.

The API never runs Flower in its own process: it starts the same command an operator would
type (simulation, or the deployment engine when `fedcrm coordinator serve` was given a
SuperLink: the operator fixes that address when serving, never an API caller), in its own session, with output to
``<runs dir>/.operator/<run id>.log``, and records the PID in the registry. Stop sends
SIGTERM to that PID (the command then abandons the run cleanly: status ``killed``, manifest
written, every process stopped); resume starts `fedcrm coordinator resume RUN_DIR`. A PID is
signalled only while ``/proc/<pid>/cmdline`` still names the run, so a reused PID is never hit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from fedcrm._offline import OFFLINE_ENV
from fedcrm.coordinator.registry_index import get_run, index_run, record_started, set_pid
from fedcrm.coordinator.run_config import RunConfig
from fedcrm.coordinator.runner import new_run_id
from fedcrm.errors import CoordinatorError

FEDCRM = str(Path(sys.executable).with_name("fedcrm"))
LOG_DIR = ".operator"


def _log_path(runs_dir: Path, run_id: str, what: str) -> Path:
    folder = runs_dir / LOG_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{run_id}.{what}.log"


def _spawn(args: list[str], log: Path) -> int:
    env = {**os.environ, **OFFLINE_ENV, "NO_COLOR": "1"}
    with log.open("ab") as out:
        process = subprocess.Popen([FEDCRM, *args], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, start_new_session=True)
    _REAPERS[process.pid] = process  # keep the handle so the child is reaped (no zombie) when polled
    return process.pid


_REAPERS: dict[int, subprocess.Popen[bytes]] = {}


def pid_alive(pid: int | None, run_id: str) -> bool:
    """True while ``pid`` is a live process whose command line names ``run_id``."""
    if not pid:
        return False
    child = _REAPERS.get(pid)
    if child is not None and child.poll() is not None:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(run_id.encode() in part for part in cmdline)


def _toml(cfg: RunConfig) -> str:
    """A run-config TOML of the fields the operator set (plus run id and task), nested models as sub-tables.

    Hand-written (a few lines) because only a TOML reader is in the standard library; scalars are
    written as JSON literals, which are valid TOML for strings, numbers and booleans.
    """
    data = cfg.model_dump(mode="json", exclude_unset=True)
    data.update(run_id=cfg.run_id, task=str(cfg.task))
    lines: list[str] = []

    def table(name: str, values: dict[str, object]) -> None:
        lines.append(f"[{name}]")
        nested = {}
        for key, value in values.items():
            if value is None:
                continue
            if isinstance(value, dict):
                nested[key] = value
            else:
                lines.append(f"{key} = {json.dumps(value)}")
        for key, value in nested.items():
            table(f"{name}.{key}", value)

    table("run", data)
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class DeploymentTarget:
    """The SuperLink runs started through the API go to (set by the operator with `serve --superlink`)."""

    superlink: str
    root_certificates: Path | None  # None: an explicit --insecure SuperLink (loopback tests only)

    def args(self, num_partners: int) -> list[str]:
        """The `fedcrm coordinator run` options that send a run of ``num_partners`` partners to this SuperLink."""
        trust = ["--root-certificates", str(self.root_certificates)] if self.root_certificates else ["--insecure"]
        return ["--superlink", self.superlink, "--partners", str(num_partners), *trust]


def start_run(engine: Engine, runs_dir: Path, registry: str, *, partners: list[Path], cfg: RunConfig,
              deployment: DeploymentTarget | None = None, num_partners: int | None = None) -> str:
    """Start `fedcrm coordinator run` for a validated config; returns the run id (status ``starting``).

    The whole config is written to ``<runs dir>/.operator/<run id>.toml`` and passed with ``--config``.
    With ``deployment`` the run goes to that SuperLink and waits for ``num_partners`` partners
    (``partners`` must then be empty: the partners' configs stay at the partners).
    """
    if deployment is not None and (partners or not num_partners):
        raise CoordinatorError("a deployment run names how many partners join, not partner config files")
    from fedcrm.protocol import load_task_schema

    run_id = cfg.run_id or new_run_id()
    cfg = cfg.model_copy(update={"run_id": run_id, "task": Path(cfg.task).resolve()})
    run_dir = (runs_dir / run_id).resolve()
    if run_dir.exists():
        raise CoordinatorError(f"run {run_id!r} already exists")
    config_path = _log_path(runs_dir, run_id, "run").with_name(f"{run_id}.toml")
    config_path.write_text(_toml(cfg))
    args = ["coordinator", "run", "--config", str(config_path), "--runs-dir", str(runs_dir), "--registry", registry]
    for p in partners:
        args += ["--partner", str(p)]
    if deployment is not None:
        args += deployment.args(int(num_partners or 0))
    task = load_task_schema(cfg.task)
    pid = _spawn(args, _log_path(runs_dir, run_id, "run"))
    record_started(engine, run_id, run_dir, pid, cfg.model_dump(mode="json"), num_partners or len(partners),
                   task.name, task.sha256())
    return run_id


def stop_run(engine: Engine, run_id: str) -> int:
    """SIGTERM the process supervising a run; returns its PID."""
    run = get_run(engine, run_id)
    if run["status"] not in ("starting", "running") or not pid_alive(run["pid"], run_id):
        raise CoordinatorError(f"run {run_id} is not running (status {run['status']})")
    os.kill(int(run["pid"]), signal.SIGTERM)
    return int(run["pid"])


def resume_run(engine: Engine, runs_dir: Path, registry: str, run_id: str) -> int:
    """Start `fedcrm coordinator resume` for a killed or failed run; returns the PID."""
    run = get_run(engine, run_id)
    if pid_alive(run["pid"], run_id):
        raise CoordinatorError(f"run {run_id} is still running (pid {run['pid']})")
    if run["status"] not in ("killed", "failed"):
        raise CoordinatorError(f"run {run_id} is {run['status']}; only a killed or failed run can be resumed")
    run_dir = Path(run["run_dir"])
    if not (run_dir / "checkpoint").is_dir():
        raise CoordinatorError(f"run {run_id} completed no round (no checkpoint); start a new run")
    pid = _spawn(["coordinator", "resume", str(run_dir), "--registry", registry], _log_path(runs_dir, run_id, "resume"))
    set_pid(engine, run_id, pid, status="running")
    return pid


def refresh(engine: Engine, run_id: str) -> None:
    """Re-index a run that is (or was) running; a supervisor that died without ending its run marks it failed."""
    run = get_run(engine, run_id)
    if run["status"] not in ("starting", "running"):
        return
    run_dir = Path(run["run_dir"])
    alive = pid_alive(run["pid"], run_id)
    if (run_dir / "plan.json").exists():
        index_run(engine, run_dir)
        run = get_run(engine, run_id)
        if alive and run["status"] not in ("starting", "running"):
            # Its process is still at work: a resume that has not yet replaced the previous segment's
            # status.json, or a run cleaning up; the command itself indexes the run when it ends.
            set_pid(engine, run_id, run["pid"], status="running")
            return
    if not alive and run["status"] in ("starting", "running") and not (run_dir / "status.json").exists():
        from sqlalchemy.orm import Session

        from fedcrm.coordinator.registry_db import RunRow

        with Session(engine) as session, session.begin():
            row = session.get(RunRow, run_id)
            if row is not None:
                row.status = "failed"
                row.error = (f"the coordinator process {run['pid']} exited before the run ended; see "
                             f"{run_dir.parent / LOG_DIR / (run_id + '.run.log')}")
