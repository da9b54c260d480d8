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
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedcrm.coordinator.link_security import connection_toml
from fedcrm.coordinator.engine import CLIENT_APP_REF, PLAIN_CLIENT_APP_REF, write_app_dir
from fedcrm.coordinator.registry import finalise_run_dir, read_events
from fedcrm.coordinator.run_config import RunConfig
from fedcrm.coordinator.runner import RunInterrupted, RunResult, plan_run, supervise
from fedcrm.coordinator.superlink import flower_env, venv_bin
from fedcrm.errors import CoordinatorError
from fedcrm.logging import get_logger

log = get_logger(__name__)

CONNECTION = "fedcrm"


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
    """
    if num_partners < 2:
        raise CoordinatorError("a federated run needs at least two partners (--partners N)")
    plan = plan_run(config, num_partners, runs_dir)
    run_dir = plan.run_dir
    client_ref = CLIENT_APP_REF if config.aggregation == "secagg" else PLAIN_CLIENT_APP_REF
    app_dir = write_app_dir(run_dir, run_dir / "plan.json", [], client_ref)  # partner paths stay with partners
    flwr_home = run_dir / "flwr_home"
    write_connection(flwr_home, superlink, root_certificates=root_certificates)
    marker = uuid.uuid4().hex
    started = time.monotonic()
    interrupted: str | None = None
    try:
        returncode = supervise([str(venv_bin() / "flwr"), "run", str(app_dir), CONNECTION, "--stream"],
                               run_dir=run_dir, env=flower_env(flwr_home, marker), log_name="flwr_run.log",
                               marker=marker, on_event=on_event, timeout_s=timeout_s)
    except RunInterrupted as exc:  # SIGINT/SIGTERM: record the run as killed (H5)
        interrupted, returncode = exc.signal_name, None
    wall = time.monotonic() - started
    error = f"killed: {interrupted}" if interrupted else _run_error(run_dir, returncode)
    outcome = "killed" if interrupted else ("completed" if error is None else "failed")
    rounds = finalise_run_dir(run_dir, succeeded=error is None, error=error, wall_s=wall, outcome=outcome)
    return RunResult(plan.run_id, run_dir, error is None, error, rounds, wall, outcome=outcome,
                     interrupted_by=interrupted)


def _run_error(run_dir: Path, returncode: int | None) -> str | None:
    """Why a deployment run failed, or None if the ServerApp finished it."""
    events = read_events(run_dir)
    if any(e["event"] == "run_end" for e in events) and (run_dir / "model" / "final.safetensors").exists():
        return None
    tail = (run_dir / "flwr_run.log").read_text(errors="replace").strip().splitlines()[-5:]
    return f"flwr run exited with code {returncode} without finishing the run: " + " | ".join(tail)
