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
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedcrm._offline import OFFLINE_ENV, write_ray_bootstrap_config
from fedcrm.coordinator.lifecycle import PARENT_FD_VAR, PARENT_PID_VAR, finish_run, wait_for_reaper
from fedcrm.coordinator.processes import MARKER_VAR, stop_marked
from fedcrm.coordinator.run_config import RunConfig, RunPlan
from fedcrm.errors import ConfigError, CoordinatorError, RoundFailed
from fedcrm.faults import check_fault_for_run
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
    outcome: str = "completed"  # completed | failed | killed
    interrupted_by: str | None = None  # SIGINT / SIGTERM received by this process


class RunInterrupted(BaseException):
    """SIGTERM (or SIGINT) reached the process supervising a run."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


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
    # Partner config paths are passed through unread: the coordinator never opens them.
    partners = [str(Path(p).resolve()) for p in partner_configs]
    return run_planned(plan, plan.run_dir / "plan.json", partners, on_event=on_event, timeout_s=timeout_s)


def check_partner_count(config: RunConfig, num_partners: int) -> None:
    """Refuse, before anything starts, a min_partners or SecAgg+ setting this many partners cannot meet."""
    from fedcrm.coordinator.secagg import secagg_parameters

    try:
        config.min_partners_of(num_partners)
        if config.aggregation == "secagg":
            secagg_parameters(num_partners, config.min_partners_of(num_partners))
    except ValueError as exc:
        raise ConfigError(f"run config: {exc}") from exc


def run_planned(plan: RunPlan, plan_path: Path, partners: list[str], *,
                on_event: Callable[[dict[str, Any]], None] | None = None, timeout_s: float = 3600.0) -> RunResult:
    """Run (or resume) a planned federation on the simulation engine and wait for it to end."""
    run_dir = plan.run_dir
    ray_tmp = Path(tempfile.mkdtemp(prefix="fcr-", dir=get_settings().ray_tmp_root))
    marker = uuid.uuid4().hex
    read_end, write_end = os.pipe()
    env = dict(os.environ)
    env.update(OFFLINE_ENV)
    env.update({
        MARKER_VAR: marker,
        PARENT_FD_VAR: str(read_end),
        PARENT_PID_VAR: str(os.getpid()),
        "FLWR_HOME": str(run_dir / "flwr_home"),
        "RAY_TMPDIR": str(ray_tmp),
        "HOME": str(ray_tmp / "home"),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        # On a loaded machine Ray's raylet gives up waiting for its own agents and crashes (the
        # node then "timed out during startup"): give them longer. The engine also retries a
        # failed Ray start (fedcrm.coordinator.engine.restart_after_failed_ray_start).
        "RAY_agent_register_timeout_ms": "180000",
        "RAY_raylet_start_wait_time_s": "180",
    })
    write_ray_bootstrap_config(ray_tmp / "home")
    (run_dir / "status.json").unlink(missing_ok=True)  # the engine writes this segment's status
    (run_dir / "failure.txt").unlink(missing_ok=True)
    started = time.monotonic()
    interrupted: str | None = None
    try:
        returncode = supervise([sys.executable, "-m", "fedcrm.coordinator.engine", str(plan_path), *partners],
                               run_dir=run_dir, env=env, log_name="engine.log", marker=marker,
                               on_event=on_event, timeout_s=timeout_s, parent_pipe=(read_end, write_end))
    except RunInterrupted as exc:
        interrupted, returncode = exc.signal_name, None
    wall = time.monotonic() - started
    status = read_status(run_dir)
    if status is None:  # the engine died without ending the run: end it here
        error = f"engine exited with code {returncode}; see {run_dir / 'engine.log'}"
        outcome = "killed" if interrupted else "failed"
        finish_run(run_dir, outcome=outcome, error=f"killed: {interrupted}" if interrupted else error,
                   wall_s=wall, marker=marker, ray_tmp=ray_tmp)
        status = read_status(run_dir) or {}
    shutil.rmtree(ray_tmp, ignore_errors=True)
    rounds = json.loads((run_dir / "metrics" / "rounds.json").read_text())
    return RunResult(plan.run_id, run_dir, bool(status.get("succeeded")), status.get("error"), rounds, wall, ray_tmp,
                     outcome=str(status.get("outcome", "failed")), interrupted_by=interrupted)


def resume_federation(run_dir: Path, partner_configs: list[Path] | None = None, *,
                      on_event: Callable[[dict[str, Any]], None] | None = None,
                      timeout_s: float = 3600.0) -> RunResult:
    """Continue a killed or failed simulation run from its newest checkpoint, in the same run directory.

    Partner config paths default to those the run started with (passed through unread).
    Models of rounds after the checkpoint are discarded: those rounds run again.
    """
    from fedcrm.coordinator.checkpoint import prepare_resume

    run_dir = run_dir.resolve()
    if not (run_dir / "plan.json").exists():
        raise CoordinatorError(f"{run_dir}: not a run directory (no plan.json)")
    plan = RunPlan.load(run_dir / "plan.json")
    status = read_status(run_dir)
    if status is None:
        raise CoordinatorError(f"{run_dir}: the run has not ended (no status.json); is its coordinator still running?")
    if status.get("outcome") == "completed" or status.get("succeeded"):
        raise CoordinatorError(f"{run_dir}: the run completed; nothing to resume")
    check_fault_for_run(plan.config.aggregation)
    partners = [str(Path(p).resolve()) for p in partner_configs] if partner_configs else _started_partners(run_dir)
    if len(partners) != plan.num_partners:
        raise CoordinatorError(f"{run_dir}: the run has {plan.num_partners} partners, {len(partners)} given")
    resumed, path = prepare_resume(run_dir, plan)  # refuses a missing or mismatched checkpoint before Ray starts
    return run_planned(resumed, path, partners, on_event=on_event, timeout_s=timeout_s)


def _started_partners(run_dir: Path) -> list[str]:
    """Partner config paths the run's simulation was started with (from its Flower app directory)."""
    import tomllib

    app = run_dir / "flower_app" / "pyproject.toml"
    if not app.exists():
        raise CoordinatorError(f"{run_dir}: no Flower app directory; give the partners with --partner")
    config = tomllib.loads(app.read_text())["tool"]["flwr"]["app"]["config"]
    keys = sorted((k for k in config if k.startswith("partner-config-")), key=lambda k: int(k.rsplit("-", 1)[1]))
    if not keys:
        raise CoordinatorError(f"{run_dir}: the run was not a simulation run; give the partners with --partner")
    return [str(config[k]) for k in keys]


def read_status(run_dir: Path) -> dict[str, Any] | None:
    """The run directory's status.json, if the run has ended."""
    path = run_dir / "status.json"
    return json.loads(path.read_text()) if path.exists() else None


def plan_run(config: RunConfig, num_partners: int, runs_dir: Path | None = None) -> RunPlan:
    """Create the run directory and write its task schema and plan (shared by both engines).

    A malformed fault-injection spec in the environment is refused here, before anything starts.
    """
    check_fault_for_run(config.aggregation)
    check_partner_count(config, num_partners)
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
              on_event: Callable[[dict[str, Any]], None] | None, timeout_s: float,
              parent_pipe: tuple[int, int] | None = None, abandon_grace_s: float = 60.0) -> int | None:
    """Run a run's driver process in its own session, follow its events, then stop everything it started.

    With ``parent_pipe`` (read end, write end) the driver inherits the read end and watches
    it: on SIGINT/SIGTERM or a timeout here, closing the write end tells the driver to
    abandon the run and end it itself (up to ``abandon_grace_s``); if this process is
    SIGKILLed the kernel closes it. Every process carrying ``marker`` in its environment is
    stopped by PID at the end, however the driver ended. Returns the driver's exit code;
    raises :class:`RunInterrupted` after cleaning up if a signal arrived.
    """
    interrupted: str | None = None
    restore = _raise_on_sigterm()
    try:
        with (run_dir / log_name).open("w") as out:
            process = subprocess.Popen(command, cwd=run_dir, env=env, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True, pass_fds=(parent_pipe[0],) if parent_pipe else ())
            if parent_pipe:
                os.close(parent_pipe[0])
            try:
                _follow(process, run_dir / "events.jsonl", on_event, timeout_s)
            except KeyboardInterrupt:
                interrupted = "SIGINT"
            except RunInterrupted as exc:
                interrupted = exc.signal_name
            finally:
                if parent_pipe:
                    os.close(parent_pipe[1])  # EOF: the driver abandons the run and ends it
                    try:
                        process.wait(timeout=abandon_grace_s)
                    except subprocess.TimeoutExpired:
                        log.error("the engine did not end the run in time", extra={"pid": process.pid})
                if process.poll() is None:
                    process.kill()
                    process.wait()
                if not wait_for_reaper(run_dir, abandon_grace_s):
                    log.error("the run's reaper did not end in time", extra={"run_dir": str(run_dir)})
                leftover = stop_marked(marker)
                if leftover:
                    log.error("processes survived SIGKILL", extra={"pids": sorted(leftover)})
    finally:
        restore()
    if interrupted:
        raise RunInterrupted(interrupted)
    return process.returncode


def _raise_on_sigterm() -> Callable[[], None]:
    """Turn SIGTERM into :class:`RunInterrupted` while a run is supervised (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, _frame: object) -> None:
        raise RunInterrupted(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


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
                    if not line.endswith("\n"):
                        break  # a line still being written: read it next time
                    if on_event is not None:
                        on_event(json.loads(line))
                    position += len(line.encode())
        if done:
            return
        if time.monotonic() > deadline:
            raise RoundFailed(0, "timeout", [], f"the run did not finish within {timeout_s:.0f} s")
        time.sleep(0.25)
