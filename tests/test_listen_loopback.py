"""Nothing a run starts listens beyond loopback: the socket table during real runs and `consent serve`.

The kernel's socket table (``/proc/net/tcp`` and ``/proc/net/tcp6``, state LISTEN) is
sampled while a simulation run (Ray: GCS, raylet, agents, workers), a deployment run
(SuperLink, three SuperNodes and their ClientApp workers, ``flwr run``, the ServerApp)
and the consent API are running. Each listening socket is attributed to a process
through ``/proc/PID/fd``; only processes of the run under test count (their environment
names this test's temporary directory, or they descend from the process the test
started), so other programs on the machine cannot make the test pass or fail. Any such
socket bound to an address that is not loopback (``0.0.0.0``, ``::`` or an interface's
address) fails the test, and so does seeing no listening socket at all (the sampling
would be broken).
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedcrm.cli import app
from fedcrm.coordinator.superlink import free_port
from tests.federation import TELCO_TASK, copy_partners, run
from tests.socket_table import decode_address, listening_table, socket_inodes



@dataclass(frozen=True)
class Listener:
    """One listening TCP socket and the process holding it."""

    pid: int
    command: str
    address: str
    port: int

    @property
    def loopback(self) -> bool:
        address = ipaddress.ip_address(self.address)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return address.is_loopback


def _parents() -> dict[int, int]:
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                out[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return out


def run_processes(root: Path, roots: set[int]) -> dict[int, str]:
    """PID → command of live processes of the run: environment mentions ``root``, or a descendant of ``roots``."""
    needle = str(root).encode()
    parents = _parents()
    found = {}
    for pid in parents:
        if pid == os.getpid():
            continue
        ancestor, mine = pid, False
        for _ in range(64):
            if ancestor in roots:
                mine = True
                break
            ancestor = parents.get(ancestor, 0)
            if ancestor <= 1:
                break
        try:
            if not mine:
                mine = needle in Path(f"/proc/{pid}/environ").read_bytes()
            if mine:
                found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
    return found


class SocketWatch:
    """Samples the listening sockets of a run's processes until stopped."""

    def __init__(self, root: Path, interval_s: float = 0.3) -> None:
        self.root = root
        self.roots: set[int] = set()
        self.interval_s = interval_s
        self.seen: set[Listener] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> None:
        """Record every listening socket the run's processes hold right now."""
        listening = listening_table()
        for pid, command in run_processes(self.root, self.roots).items():
            for inode in socket_inodes(pid) & listening.keys():
                address, port = listening[inode]
                self.seen.add(Listener(pid, command[:160], address, port))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> SocketWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def assert_loopback_only(self, expect: tuple[str, ...]) -> None:
        """Fail on any non-loopback listener; require listeners from each program named in ``expect``."""
        assert self.seen, "no listening socket of the run was seen: the sampling is broken"
        wide = sorted(f"{s.address}:{s.port} pid {s.pid} ({s.command})" for s in self.seen if not s.loopback)
        assert not wide, "listening beyond loopback:\n" + "\n".join(wide)
        commands = " ".join(s.command for s in self.seen)
        for program in expect:
            assert program in commands, f"no listening socket of {program} was seen: {sorted(self.seen)}"


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the process exited with {process.returncode}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"nothing listened on 127.0.0.1:{port} within {timeout_s} s")


def test_the_watch_flags_a_socket_bound_to_every_interface(tmp_path: Path) -> None:
    code = "import socket, time; s = socket.socket(); s.bind(('0.0.0.0', 0)); s.listen(); print(s.getsockname()[1], flush=True); time.sleep(60)"
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        watch = SocketWatch(tmp_path)
        watch.roots.add(process.pid)
        watch.sample()
        assert [(s.address, s.port, s.loopback) for s in watch.seen] == [("0.0.0.0", port, False)]
        with pytest.raises(AssertionError, match="beyond loopback"):
            watch.assert_loopback_only(())
    finally:
        process.kill()
        process.wait()
    assert decode_address("0100007F:1F90") == ("127.0.0.1", 8080)
    assert decode_address("00000000000000000000000001000000:0050") == ("::1", 80)


@pytest.mark.slow
def test_a_simulation_run_listens_on_loopback_only(tmp_path: Path) -> None:
    partners = copy_partners(tmp_path / "partners")
    with SocketWatch(tmp_path) as watch:
        result = run(tmp_path, partners, rounds=1)
    assert result.succeeded, result.error
    watch.assert_loopback_only(("gcs_server", "raylet"))


@pytest.mark.slow
def test_a_deployment_run_listens_on_loopback_only(tmp_path: Path) -> None:
    from fedcrm.coordinator.deployment import run_deployment
    from fedcrm.coordinator.run_config import RunConfig
    from tests.deploy.stack import deployment_stack

    configs = copy_partners(tmp_path / "partners")
    # SuperLink defaults: nothing configured; the joins are stopped with Ctrl-C, the SuperLink by PID.
    with SocketWatch(tmp_path) as watch, deployment_stack(tmp_path, configs) as stack:
        watch.roots.update(stack.pids)
        cfg = RunConfig.model_validate({"task": TELCO_TASK, "rounds": 1, "seed": 0, "run_id": "loopback"})
        result = run_deployment(cfg, len(configs), stack.link.address, tmp_path / "runs", timeout_s=600)
        watch.sample()
    assert result.succeeded, result.error
    watch.assert_loopback_only(("superlink_main", "supernode_main"))


@pytest.mark.slow
def test_consent_serve_listens_on_loopback_only(tmp_path: Path) -> None:
    [config] = copy_partners(tmp_path / "partners", names=("A",), task=None)
    tokens = tmp_path / "tokens.json"
    created = CliRunner().invoke(app, ["consent", "token", "create", "--tokens", str(tokens), "--role", "auditor",
                                       "--name", "loopback-test"])
    assert created.exit_code == 0, created.output
    port = free_port()
    serve = subprocess.Popen([sys.executable, "-m", "fedcrm.cli", "consent", "serve", "--tokens", str(tokens),
                              "--partner-dir", str(config.parent), "--port", str(port)],
                             stdout=(tmp_path / "serve.log").open("wb"), stderr=subprocess.STDOUT)
    watch = SocketWatch(tmp_path)
    watch.roots.add(serve.pid)
    try:
        _wait_for_port(port, serve)
        watch.sample()
    finally:
        serve.send_signal(signal.SIGINT)
        try:
            serve.wait(timeout=30)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait()
    assert any(s.port == port for s in watch.seen), watch.seen
    watch.assert_loopback_only(("consent serve",))
