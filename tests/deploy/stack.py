"""A local deployment for tests: a real SuperLink and one real `fedcrm client join` per partner, stopped by PID.

Shared by the deployment tests (the SecAgg+ round, the dropout and kill tests, TLS with node
authentication, the loopback socket watch), which had each started and stopped the same
processes by hand. :func:`deployment_stack` starts ``flower-superlink`` (through
:func:`fedcrm.coordinator.superlink.start_superlink`, state under ``<root>/superlink``) and,
unless told not to, one join per partner config, each logging to ``join.log`` beside its
config; on the way out it signals every join still running (Ctrl-C by default), waits for
each, stops by PID any that outlives the wait, then stops the SuperLink and keeps in
:attr:`Stack.leftover` whatever it had to kill. :func:`flower_processes` finds what is left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcrm.coordinator.processes import stop_processes
from fedcrm.coordinator.superlink import SuperLink, free_port, start_superlink, stop_superlink

__all__ = ["Stack", "deployment_stack", "flower_processes", "process_table"]


def flower_processes(root: Path) -> dict[int, str]:
    """PID → command line of every live, non-zombie process whose FLWR_HOME lies under ``root``."""
    needle = f"FLWR_HOME={root}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if state != "Z" and any(v.startswith(needle) for v in env):
            found[int(entry.name)] = cmd
    return found


def process_table() -> dict[int, tuple[int, str]]:
    """PID → (parent PID, command line) of every process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, IndexError, ValueError):
                continue
            table[int(entry.name)] = (ppid, cmd)
    return table


@dataclass
class Stack:
    """A SuperLink and the partners' joins (name → its current `fedcrm client join` process)."""

    link: SuperLink
    configs: dict[str, Path]
    root: Path
    root_certificates: Path | None = None
    joins: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    #: Joins replaced by a later :meth:`join` of the same partner (they are stopped too).
    retired: list[subprocess.Popen[bytes]] = field(default_factory=list)
    #: What stopping the SuperLink had to kill (set on leaving :func:`deployment_stack`; should stay empty).
    leftover: set[int] = field(default_factory=set)

    def join(self, name: str) -> subprocess.Popen[bytes]:
        """`fedcrm client join` for partner ``name``, as its data team runs it (TLS when the stack has a CA)."""
        trust = ["--root-certificates", str(self.root_certificates)] if self.root_certificates else ["--insecure"]
        config = self.configs[name]
        with (config.parent / "join.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "fedcrm.cli", "client", "join", "--config", str(config),
                 "--superlink", self.link.address, "--port", str(free_port()), *trust],
                stdout=log, stderr=subprocess.STDOUT)
        replaced = self.joins.get(name)
        if replaced is not None and replaced not in self.retired:
            self.retired.append(replaced)
        self.joins[name] = process
        return process

    def join_all(self) -> None:
        """A join for every partner, in config order."""
        for name in self.configs:
            self.join(name)

    @property
    def pids(self) -> set[int]:
        """The PIDs of the current joins."""
        return {process.pid for process in self.joins.values()}

    def stop_joins(self, sig: int = signal.SIGINT, timeout_s: float = 60.0) -> list[int | None]:
        """Send ``sig`` to every join still running, wait for each, stop by PID any that outlives the wait.

        Returns the current joins' exit codes, in partner order.
        """
        processes = [*self.joins.values(), *self.retired]
        for process in processes:
            if process.poll() is None:
                process.send_signal(sig)
        for process in processes:
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                stop_processes({process.pid})
                process.poll()
        return [process.returncode for process in self.joins.values()]

    def supernode_pid(self, name: str, timeout_s: float = 120.0) -> int:
        """PID of partner ``name``'s SuperNode (the child of its join process)."""
        join = self.joins[name]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for pid, (ppid, cmd) in process_table().items():
                if ppid == join.pid and "fedcrm.client.supernode_main" in cmd:
                    return pid
            time.sleep(0.2)
        raise AssertionError(f"partner {name}'s SuperNode never started")

    def worker_pid(self, name: str) -> int:
        """PID of partner ``name``'s long-lived ClientApp worker (a child of its join process)."""
        join = self.joins[name]
        for pid, (ppid, cmd) in process_table().items():
            if ppid == join.pid and "fedcrm.client.clientapp_worker" in cmd:
                return pid
        raise AssertionError(f"partner {name}'s ClientApp worker is not running")

    def kill_supernode(self, name: str) -> None:
        """SIGKILL partner ``name``'s SuperNode by PID (a crash: no goodbye to the SuperLink)."""
        os.kill(self.supernode_pid(name), signal.SIGKILL)
        old = self.joins[name]
        old.wait(timeout=120)  # join notices its SuperNode is gone and stops its ClientApp worker
        self.retired.append(old)


@contextmanager
def deployment_stack(
    root: Path,
    configs: Sequence[Path],
    *,
    join: bool = True,
    stop_signal: int = signal.SIGINT,
    root_certificates: Path | None = None,
    **superlink_options: Any,
) -> Iterator[Stack]:
    """A SuperLink with its state in ``root/superlink`` and (``join``) a join per config; all stopped by PID.

    Partners are named by their config's folder. ``superlink_options`` go to ``start_superlink``
    (``tls_dir``, ``node_auth``, …); joins trust ``root_certificates`` when given, else run
    ``--insecure``. Joins still running at the end get ``stop_signal``.
    """
    link = start_superlink(root / "superlink", **superlink_options)
    stack = Stack(link, {config.parent.name: config for config in configs}, root, root_certificates)
    try:
        if join:
            stack.join_all()
        yield stack
    finally:
        try:
            stack.stop_joins(stop_signal)
        finally:
            stack.leftover = stop_superlink(link)
