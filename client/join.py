"""Joining a real federated run: the partner's side as a Flower SuperNode.

``fedcrm client join`` starts two processes in one process group, both on 127.0.0.1:

- ``flower-supernode --isolation process`` (through :mod:`fedcrm.client.supernode_main`,
  which shortens Flower's fixed 3 s idle poll) connects out to the coordinator's
  SuperLink and serves its Runtime API on ``127.0.0.1:<port>`` (default 9094) — nothing
  listens on another interface;
- one long-lived ClientApp worker (:mod:`fedcrm.client.clientapp_worker`) claims the
  SuperNode's tasks through that API and runs the ClientApp of the *installed* fedcrm
  (``fedcrm.client.flower_app:app``; the FAB carries only a pyproject naming it), so the
  partner runs its own copy of the code, never code shipped by the coordinator. It
  imports torch, pandas and flwr once instead of once per message.

``isolation="subprocess"`` keeps Flower's stock behaviour instead (``flower-superexec``
starting one ``flwr-clientapp`` per message, 3 s polls), for comparison runs.

The SuperNode gets the partner's config path as node config (``partner-config``); the
ClientApp reads data directory, key and consent ledger from it, so the coordinator never
learns them. Both processes run with the no-phone-home environment and Flower's state
under the partner's work directory. :func:`join` stays in the foreground until the
SuperNode exits; Ctrl-C (or SIGTERM) stops the whole group, so no SuperNode, worker or
ClientApp process is left behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import fedcrm._offline as offline
from fedcrm.client.config import PartnerConfig, load_partner_config
from fedcrm.client.node_auth import node_key_args
from fedcrm.client.pseudonymise import load_key
from fedcrm.errors import ConfigError

NODE_CONFIG_KEY = "partner-config"
STOP_GRACE_S = 10.0
#: Flower's default port of the SuperNode's Runtime API.
DEFAULT_RUNTIME_PORT = 9094
LOOPBACK = "127.0.0.1"
Isolation = Literal["process", "subprocess"]


@dataclass(frozen=True)
class JoinSettings:
    """How the SuperNode connects: SuperLink address, TLS, its own runtime port, how ClientApps run.

    ``isolation="process"`` (default): one long-lived ClientApp worker and short polls;
    ``"subprocess"``: Flower's stock SuperNode (a new ``flwr-clientapp`` per message).
    ``poll_s`` caps the SuperNode's idle poll and the worker's task poll (process mode).
    """

    superlink: str
    port: int | None = None
    insecure: bool = False
    root_certificates: Path | None = None
    isolation: Isolation = "process"
    poll_s: float = 0.2

    @property
    def runtime_port(self) -> int:
        """Port of the SuperNode's Runtime API on 127.0.0.1."""
        return self.port if self.port is not None else DEFAULT_RUNTIME_PORT

    def tls_args(self) -> list[str]:
        """``--insecure`` or ``--root-certificates CA``; exactly one must be chosen."""
        if self.insecure == (self.root_certificates is not None):
            raise ConfigError("choose exactly one of --insecure (tests, loopback) or --root-certificates CA.pem")
        if self.root_certificates is not None:
            if not self.root_certificates.exists():
                raise ConfigError(f"{self.root_certificates}: root certificate file not found")
            return ["--root-certificates", str(self.root_certificates.resolve())]
        return ["--insecure"]


def supernode_command(config: PartnerConfig, settings: JoinSettings) -> list[str]:
    """The ``flower-supernode`` command line for this partner."""
    if ":" not in settings.superlink:
        raise ConfigError(f"--superlink {settings.superlink!r}: expected HOST:PORT")
    assert config.config_path is not None
    if settings.isolation == "process":
        program = [sys.executable, "-m", "fedcrm.client.supernode_main", "--isolation", "process"]
    elif settings.isolation == "subprocess":
        program = [str(Path(sys.executable).parent / "flower-supernode")]
    else:
        raise ConfigError(f"isolation {settings.isolation!r}: expected 'process' or 'subprocess'")
    return [*program, *settings.tls_args(), *node_key_args(config, settings), "--superlink", settings.superlink,
            # The Runtime API serves the partner's own ClientApp only: loopback, always.
            "--host", LOOPBACK, "--port", str(settings.runtime_port),
            "--node-config", f"{NODE_CONFIG_KEY}='{config.config_path}'"]


def worker_command(settings: JoinSettings, supernode_pid: int) -> list[str]:
    """The long-lived ClientApp worker for a SuperNode in process-isolation mode."""
    return [sys.executable, "-m", "fedcrm.client.clientapp_worker",
            "--runtime-api-address", f"{LOOPBACK}:{settings.runtime_port}",
            "--poll-s", str(settings.poll_s), "--parent-pid", str(supernode_pid)]


def wait_for_runtime_api(port: int, process: subprocess.Popen[str], timeout_s: float = 120.0) -> None:
    """Block until the SuperNode's Runtime API accepts connections on 127.0.0.1."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return  # the SuperNode exited; join() reports its exit code
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise ConfigError(f"the SuperNode's Runtime API did not listen on {LOOPBACK}:{port} within {timeout_s:.0f} s")


def supernode_env(config: PartnerConfig, settings: JoinSettings | None = None) -> dict[str, str]:
    """Offline environment with Flower's state under the partner's work directory."""
    from fedcrm.client.supernode_main import PARENT_ENV, POLL_ENV

    env = dict(os.environ)
    env.update(offline.OFFLINE_ENV)
    env.update({
        POLL_ENV: str(settings.poll_s if settings is not None else JoinSettings("").poll_s),
        PARENT_ENV: str(os.getpid()),
        "FLWR_HOME": str(config.work_path.resolve() / "flwr_home"),
        # The SuperNode starts flower-superexec and flwr-clientapp by name: use this environment's.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
    })
    # Partner models are small: one intra-op thread is faster than contending ones (measured 0.35 s
    # vs 5 s per fit on 2 shared cores). A partner who wants more sets OMP_NUM_THREADS itself.
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def stop_group(process: subprocess.Popen[str], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM the SuperNode's process group, SIGKILL what is left after ``grace_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; children (superexec, clientapp) may still be in its group.
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def join(config_path: Path, settings: JoinSettings, *, on_line: Callable[[str], None] | None = None) -> int:
    """Run this partner's SuperNode in the foreground until it exits; returns its exit code.

    Refuses to start without the partner key. The SuperNode's output goes to
    ``<work_dir>/flwr_home/supernode.log`` and, line by line, to ``on_line``; the ClientApp
    worker's to ``<work_dir>/flwr_home/clientapp.log``.
    """
    config = load_partner_config(config_path)
    load_key(config.key_path)  # MissingPartnerKey names the file and the command that creates it
    command = supernode_command(config, settings)
    home = config.work_path.resolve() / "flwr_home"
    home.mkdir(parents=True, exist_ok=True)
    env = supernode_env(config, settings)
    process = subprocess.Popen(command, env=env, cwd=config.work_path, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    worker: subprocess.Popen[str] | None = None
    try:
        if settings.isolation == "process":
            wait_for_runtime_api(settings.runtime_port, process)
            with (home / "clientapp.log").open("a") as worker_log:
                # Its own session like the SuperNode's; it also exits by itself when the SuperNode is gone.
                worker = subprocess.Popen(worker_command(settings, process.pid), env=env, cwd=config.work_path,
                                          stdout=worker_log, stderr=subprocess.STDOUT, text=True,
                                          start_new_session=True)
        with (home / "supernode.log").open("a") as log:
            assert process.stdout is not None
            for line in process.stdout:
                log.write(line)
                log.flush()
                if on_line is not None:
                    on_line(line.rstrip())
        return process.wait()
    except KeyboardInterrupt:
        return 130
    finally:
        if worker is not None:
            stop_group(worker)
        stop_group(process)
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
