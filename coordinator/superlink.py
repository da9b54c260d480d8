"""A local Flower SuperLink for deployment runs: start it, wait for it, stop it by PID.

The SuperLink is Flower's ``flower-superlink`` run through
:mod:`fedcrm.coordinator.superlink_main` (a longer start-up window for the ServerApp
process; see there), from the same virtual environment as fedcrm, with runtime dependency
installation off (it would otherwise
``uv sync`` each run's dependencies from a registry), its logs in a directory we choose,
and the no-phone-home environment.

Its state (messages in flight, runs, registered node keys) is Flower's in-memory store by
default, not its SQLite database: measured with the round-time benchmark, the SQL store
made the SuperLink the busiest process of a deployment run (every poll of every SuperNode,
worker and ServerApp is a SQLAlchemy round trip; token clean-up runs on each), 92–130 s
per SecAgg+ round against 39–47 s in memory, side by side on the same loaded machine.
Nothing fedcrm needs lives only there: runs, checkpoints and models are in the run
directory, partner keys in the operator's partner registry (re-registered when a
SuperLink starts: ``fedcrm coordinator superlink --partners``). ``database=PATH`` keeps
Flower's SQLite store for operators who want Flower's own run history to survive a restart. It runs in its own session, and every
process it starts (``flwr-serverapp``, ``flower-superexec``) inherits a marker variable,
so stopping it stops them too, by PID (see :mod:`fedcrm.coordinator.processes`).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from fedcrm._offline import OFFLINE_ENV
from fedcrm.coordinator.link_security import superlink_security_args
from fedcrm.coordinator.processes import MARKER_VAR, stop_marked, stop_processes
from fedcrm.errors import CoordinatorError

PID_FILE = "superlink.pid"
#: Flower's Python in-memory link state (``flwr.supercore.constant.FLWR_IN_MEMORY_DB_NAME``).
IN_MEMORY_STATE = ":flwr-in-memory:"


def venv_bin() -> Path:
    """The ``bin/`` of the environment fedcrm runs in (Flower's executables live there)."""
    return Path(sys.executable).parent


def flower_env(flwr_home: Path, marker: str) -> dict[str, str]:
    """Environment for a Flower process: offline, its state under ``flwr_home``, marked for cleanup."""
    env = dict(os.environ)
    env.update(OFFLINE_ENV)
    env.update({
        "FLWR_HOME": str(flwr_home),
        MARKER_VAR: marker,
        # Flower starts its helpers (flower-superexec, flwr-serverapp, flwr-clientapp) by name.
        "PATH": f"{venv_bin()}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
    })
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, process: subprocess.Popen[bytes], timeout_s: float, what: str) -> None:
    """Block until ``host:port`` accepts connections; fail if the process exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise CoordinatorError(f"{what} exited with code {process.returncode} before listening on {host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise CoordinatorError(f"{what} did not listen on {host}:{port} within {timeout_s:.0f} s")


@dataclass
class SuperLink:
    """A running SuperLink started by :func:`start_superlink`."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    state_dir: Path
    marker: str
    tls_dir: Path | None = None  # ca.pem here is what SuperNodes and `flwr run` trust

    @property
    def address(self) -> str:
        """``host:port`` for SuperNodes and ``flwr run``."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid


def start_superlink(state_dir: Path, *, host: str = "127.0.0.1", port: int | None = None,
                    timeout_s: float = 60.0, tls_dir: Path | None = None, node_auth: bool = False,
                    database: Path | None = None) -> SuperLink:
    """Start ``flower-superlink`` with its logs (and PID file) in ``state_dir``.

    Its state is in memory unless ``database`` names a SQLite file (see the module docstring).
    TLS uses ``ca.pem``/``server.pem``/``server.key`` from ``tls_dir`` (``fedcrm certs create``);
    ``node_auth`` admits only registered SuperNode keys. Without ``tls_dir`` it is ``--insecure``.

    Raises
    ------
    CoordinatorError
        The SuperLink exited or did not listen in time (its log is named).
    """
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    marker = uuid.uuid4().hex
    log_path = state_dir / "superlink.log"
    command = [
        sys.executable, "-m", "fedcrm.coordinator.superlink_main", *superlink_security_args(tls_dir, node_auth),
        "--host", host, "--port", str(port),
        "--database", str(database.resolve()) if database else IN_MEMORY_STATE,
        "--disable-runtime-dependency-installation",
    ]
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, cwd=state_dir, env=flower_env(state_dir / "flwr_home", marker),
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    (state_dir / PID_FILE).write_text(f"{process.pid}\n")
    link = SuperLink(process, host, port, state_dir, marker, tls_dir)
    try:
        wait_for_port(host, port, process, timeout_s, f"flower-superlink (log: {log_path})")
    except CoordinatorError:
        stop_superlink(link)
        raise
    return link


def stop_superlink(link: SuperLink, grace_s: float = 5.0) -> set[int]:
    """Stop the SuperLink by PID, then every process carrying its marker; returns survivors."""
    leftover = stop_processes({link.pid}, grace_s) if link.process.poll() is None else set()
    link.process.wait(timeout=grace_s) if link.process.poll() is None else None
    leftover |= stop_marked(link.marker, grace_s)
    (link.state_dir / PID_FILE).unlink(missing_ok=True)
    return leftover
