"""Joining a real federated run: the partner's side as a Flower SuperNode.

``flower-supernode`` (from the environment fedcrm runs in) connects out to the
coordinator's SuperLink and, for every message, starts ``flwr-clientapp``, which installs
the run's FAB (only a pyproject naming ``fedcrm.client.flower_app:app``) and imports the
ClientApp from the *installed* fedcrm — the partner runs its own copy of the code, never
code shipped by the coordinator. The SuperNode gets the partner's config path as node
config (``partner-config``); the ClientApp reads data directory, key and consent ledger
from it, so the coordinator never learns them.

The SuperNode runs in its own process group with the no-phone-home environment and its
Flower state under the partner's work directory. :func:`join` stays in the foreground
until it exits; Ctrl-C (or SIGTERM) stops the whole group, so no SuperNode or ClientApp
process is left behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import fedcrm._offline as offline
from fedcrm.client.config import PartnerConfig, load_partner_config
from fedcrm.client.pseudonymise import load_key
from fedcrm.errors import ConfigError

NODE_CONFIG_KEY = "partner-config"
STOP_GRACE_S = 10.0


@dataclass(frozen=True)
class JoinSettings:
    """How the SuperNode connects: SuperLink address, TLS, its own runtime port."""

    superlink: str
    port: int | None = None
    insecure: bool = False
    root_certificates: Path | None = None

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
    command = [str(Path(sys.executable).parent / "flower-supernode"), *settings.tls_args(),
               "--superlink", settings.superlink, "--host", "127.0.0.1",
               "--node-config", f"{NODE_CONFIG_KEY}='{config.config_path}'"]
    if settings.port is not None:
        command += ["--port", str(settings.port)]
    return command


def supernode_env(config: PartnerConfig) -> dict[str, str]:
    """Offline environment with Flower's state under the partner's work directory."""
    env = dict(os.environ)
    env.update(offline.OFFLINE_ENV)
    env.update({
        "FLWR_HOME": str(config.work_path.resolve() / "flwr_home"),
        # The SuperNode starts flower-superexec and flwr-clientapp by name: use this environment's.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
    })
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
    ``<work_dir>/flwr_home/supernode.log`` and, line by line, to ``on_line``.
    """
    config = load_partner_config(config_path)
    load_key(config.key_path)  # MissingPartnerKey names the file and the command that creates it
    command = supernode_command(config, settings)
    home = config.work_path.resolve() / "flwr_home"
    home.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(command, env=supernode_env(config), cwd=config.work_path, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
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
        stop_group(process)
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
