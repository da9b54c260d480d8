"""A federated run on Flower's deployment engine: real SuperLink, partners' own SuperNodes.

The coordinator writes the run directory, plan and Flower app directory exactly as the
simulation runner does, but without partner config paths: in a deployment each partner
starts its own SuperNode with its config as node config (``fedcrm client join``) and the
coordinator never learns where the partner's files are. The run is submitted with
``flwr run <app_dir> fedcrm --stream`` against a connection written to
``$FLWR_HOME/config.toml`` inside the run directory, with runtime dependency installation
off (the FAB holds only the pyproject; ServerApp and ClientApp are imported from the
installed fedcrm on each side). Success means the ServerApp recorded ``run_end``; the
run directory is then finalised like a simulation run.

The ServerApp runs under the SuperLink, not under the operator's command: if that
command is interrupted (SIGINT/SIGTERM) the Flower run is stopped with ``flwr stop``; if
it is killed outright the ServerApp carries on, and :func:`resume_deployment` (``fedcrm
coordinator resume RUN_DIR``) first stops whatever Flower run of this run directory is
still active, ends the segment as killed, then submits a new Flower run that continues
from the newest checkpoint over the same connection (``flwr_home/config.toml``).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedcrm.coordinator.link_security import connection_toml
from fedcrm.coordinator.engine import CLIENT_APP_REF, PLAIN_CLIENT_APP_REF, write_app_dir
from fedcrm.coordinator.registry import finalise_run_dir, read_events
from fedcrm.coordinator.processes import stop_marked
from fedcrm.coordinator.run_config import RunConfig, RunPlan
from fedcrm.coordinator.runner import RunInterrupted, RunResult, plan_run, read_status, supervise
from fedcrm.coordinator.superlink import flower_env, venv_bin
from fedcrm.errors import CoordinatorError
from fedcrm.logging import get_logger

log = get_logger(__name__)

CONNECTION = "fedcrm"
#: What ``flwr run`` prints once the SuperLink accepted the run.
STARTED_RE = re.compile(r"Successfully started run (\d+)")
#: A fedcrm exception raised in the ServerApp, as its traceback's last line appears in the streamed log.
FEDCRM_ERROR_RE = re.compile(r"^fedcrm\.errors\.\w+: (.+)$", re.MULTILINE)
#: The run directory's record of its Flower submissions (marker of the ``flwr run`` processes).
SUBMISSION_FILE = "deployment.json"


def write_connection(flwr_home: Path, superlink: str, name: str = CONNECTION,
                     root_certificates: Path | None = None) -> Path:
    """Write ``$FLWR_HOME/config.toml`` with one SuperLink connection (TLS if ``root_certificates``)."""
    text = connection_toml(name, superlink, root_certificates)
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    path.write_text(text)
    return path


def run_deployment(
    config: RunConfig,
    num_partners: int,
    superlink: str,
    runs_dir: Path | None = None,
    *,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    timeout_s: float = 3600.0,
    root_certificates: Path | None = None,
    analytics: dict[str, Any] | None = None,
) -> RunResult:
    """Submit one federated run to a running SuperLink and wait for it; never raises for a failed round.

    Parameters
    ----------
    num_partners
        How many partner SuperNodes the run waits for and trains with.
    superlink
        ``HOST:PORT`` of the SuperLink (its one HTTP address serves ``flwr run`` too).
    root_certificates
        CA certificate of a TLS SuperLink (``ca.pem``); None means an insecure SuperLink.
    analytics
        The plan's ``analytics`` section (``AnalyticsSettings``) for a federated analytics run
        (secure sums and PSI counts, no training; ``fedcrm coordinator analytics --superlink``).
    """
    if num_partners < 2:
        raise CoordinatorError("a federated run needs at least two partners (--partners N)")
    plan = plan_run(config, num_partners, runs_dir)
    if analytics is not None:
        plan.analytics = analytics
        plan.save()
    write_connection(plan.run_dir / "flwr_home", superlink, root_certificates=root_certificates)
    return _submit(plan, plan.run_dir / "plan.json", "flwr_run.log", on_event=on_event, timeout_s=timeout_s)


def _submit(plan: RunPlan, plan_path: Path, log_name: str, *, on_event: Callable[[dict[str, Any]], None] | None,
            timeout_s: float) -> RunResult:
    """``flwr run`` the planned run over the run directory's connection; wait for it; finalise the run directory."""
    run_dir = plan.run_dir
    config = plan.config
    client_ref = CLIENT_APP_REF if config.aggregation == "secagg" else PLAIN_CLIENT_APP_REF
    app_dir = write_app_dir(run_dir, plan_path, [], client_ref)  # partner paths stay with partners
    flwr_home = run_dir / "flwr_home"
    marker = uuid.uuid4().hex
    (run_dir / SUBMISSION_FILE).write_text(json.dumps({"marker": marker, "log": log_name}))
    (run_dir / "status.json").unlink(missing_ok=True)  # this segment writes its own status
    started = time.monotonic()
    interrupted: str | None = None
    try:
        returncode = supervise([str(venv_bin() / "flwr"), "run", str(app_dir), CONNECTION, "--stream"],
                               run_dir=run_dir, env=flower_env(flwr_home, marker), log_name=log_name,
                               marker=marker, on_event=on_event, timeout_s=timeout_s)
    except RunInterrupted as exc:  # SIGINT/SIGTERM: record the run as killed (H5)
        interrupted, returncode = exc.signal_name, None
    if interrupted or returncode != 0:
        try:  # the ServerApp lives under the SuperLink: it must not run on unsupervised
            stop_flower_runs(run_dir)
        except (CoordinatorError, subprocess.TimeoutExpired) as exc:
            log.error("could not stop the Flower run", extra={"run_dir": str(run_dir), "error": str(exc)})
    wall = time.monotonic() - started
    error = f"killed: {interrupted}" if interrupted else _run_error(run_dir, returncode, log_name)
    outcome = "killed" if interrupted else ("completed" if error is None else "failed")
    rounds = finalise_run_dir(run_dir, succeeded=error is None, error=error, wall_s=wall, outcome=outcome)
    return RunResult(plan.run_id, run_dir, error is None, error, rounds, wall, outcome=outcome,
                     interrupted_by=interrupted)


def flower_run_ids(run_dir: Path) -> list[int]:
    """Flower run ids this run directory submitted (from its ``flwr run`` logs), oldest first."""
    ids: list[int] = []
    for log_path in sorted(run_dir.glob("flwr_run*.log"), key=lambda p: p.stat().st_mtime):
        ids += [int(m) for m in STARTED_RE.findall(log_path.read_text(errors="replace"))]
    return ids


def _flwr(run_dir: Path, *args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
    """A ``flwr`` CLI command over the run directory's SuperLink connection."""
    env = flower_env(run_dir / "flwr_home", uuid.uuid4().hex)
    env["COLUMNS"] = "400"
    return subprocess.run([str(venv_bin() / "flwr"), *args], capture_output=True, text=True, env=env,
                          timeout=timeout_s, cwd=run_dir)


def flower_run_status(run_dir: Path, flower_run_id: int) -> str:
    """The SuperLink's status of one Flower run (``pending``, ``running``, ``finished:stopped``, …)."""
    done = _flwr(run_dir, "ls", CONNECTION, "--run-id", str(flower_run_id), "--format", "json")
    text = done.stdout
    try:
        runs = json.loads(text[text.index("{"):])["runs"]
        return str(runs[0]["status"])
    except (ValueError, KeyError, IndexError) as exc:
        raise CoordinatorError(f"flwr ls could not read Flower run {flower_run_id}: "
                               f"{(done.stdout + done.stderr).strip()[-500:]}") from exc


def stop_flower_runs(run_dir: Path, timeout_s: float = 180.0) -> list[int]:
    """Stop every Flower run of this run directory that is not finished; wait until each is. Returns those stopped.

    Also stops the ``flwr run`` log streamer of a coordinator that was killed (by its marker).
    """
    stopped = []
    for flower_run_id in flower_run_ids(run_dir):
        if flower_run_status(run_dir, flower_run_id).startswith("finished"):
            continue
        done = _flwr(run_dir, "stop", str(flower_run_id), CONNECTION)
        log.info("stopping Flower run", extra={"flower_run_id": flower_run_id, "rc": done.returncode})
        deadline = time.monotonic() + timeout_s
        while not flower_run_status(run_dir, flower_run_id).startswith("finished"):
            if time.monotonic() > deadline:
                raise CoordinatorError(f"Flower run {flower_run_id} of {run_dir} did not stop within {timeout_s:.0f} s")
            time.sleep(1.0)
        stopped.append(flower_run_id)
    submission = run_dir / SUBMISSION_FILE
    if submission.exists():
        stop_marked(json.loads(submission.read_text())["marker"])
    return stopped


def resume_deployment(run_dir: Path, *, on_event: Callable[[dict[str, Any]], None] | None = None,
                      timeout_s: float = 3600.0) -> RunResult:
    """Continue a deployment run whose coordinator was killed or that failed, from its newest checkpoint.

    The ServerApp a killed coordinator left on the SuperLink is stopped first (it would
    otherwise keep writing to the run directory); the segment is ended as ``killed`` (status,
    manifest), then a new Flower run continues at the round after the newest checkpoint.
    Raises CoordinatorError if the run completed or has no checkpoint.
    """
    from fedcrm.coordinator.checkpoint import prepare_resume

    run_dir = run_dir.resolve()
    plan = RunPlan.load(run_dir / "plan.json")
    if not (run_dir / SUBMISSION_FILE).exists():
        raise CoordinatorError(f"{run_dir}: not a deployment run (no {SUBMISSION_FILE})")
    stop_flower_runs(run_dir)
    if read_status(run_dir) is None:  # the coordinator was killed: end its segment here
        finished = _run_error(run_dir, None) is None  # the ServerApp may have finished on its own meanwhile
        finalise_run_dir(run_dir, succeeded=finished, wall_s=0.0, outcome="completed" if finished else "killed",
                         error=None if finished else "killed: the coordinator process was lost")
    status = read_status(run_dir) or {}
    if status.get("outcome") == "completed" or status.get("succeeded"):
        raise CoordinatorError(f"{run_dir}: the run completed; nothing to resume")
    resumed, path = prepare_resume(run_dir, plan)
    return _submit(resumed, path, f"flwr_run-resume-{resumed.resume_from_round}.log", on_event=on_event,
                   timeout_s=timeout_s)


def _run_error(run_dir: Path, returncode: int | None, log_name: str = "flwr_run.log") -> str | None:
    """Why a deployment run failed, or None if the ServerApp finished it."""
    events = read_events(run_dir)
    # A training run ends with its final model, an analytics run with its results (coordinator/analytics_run.py).
    produced = (run_dir / "model" / "final.safetensors").exists() or (run_dir / "analytics" / "results.json").exists()
    if any(e["event"] == "run_end" for e in events) and produced:
        return None
    text = (run_dir / log_name).read_text(errors="replace")
    # The ServerApp's own error (a round that failed naming its partners, …), streamed into the log by Flower.
    raised = FEDCRM_ERROR_RE.findall(text)
    if raised:
        return raised[-1].strip()
    tail = text.strip().splitlines()[-5:]
    return f"flwr run exited with code {returncode} without finishing the run: " + " | ".join(tail)
