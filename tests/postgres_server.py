"""A real, throw-away PostgreSQL server for tests and benchmarks (pytest plugin module).

Uses Debian's ``postgresql`` package binaries (found by a glob on
/usr/lib/postgresql/*/bin). ``initdb`` refuses to run as root, so as root the data
directory is handed to the ``postgres`` user and the server runs as that user via
``runuser``. The server listens on 127.0.0.1 on a free port and on a socket in its own
temp dir; teardown stops it with ``pg_ctl stop -m fast`` and makes sure the postmaster
PID is gone. Missing binaries FAIL the fixture (never skip): install with
``apt-get install postgresql``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedcrm.coordinator import local_postgres
from fedcrm.errors import CoordinatorError



class PostgresUnavailable(RuntimeError):
    """The server binaries are missing or the server did not start."""


@dataclass
class PostgresServer:
    """A running throw-away server."""

    bindir: Path
    root: Path
    port: int
    pid: int
    as_user: str | None

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    def url(self, dbname: str = "postgres") -> str:
        """SQLAlchemy URL (psycopg 3) of a database on this server."""
        return f"postgresql+psycopg://app@127.0.0.1:{self.port}/{dbname}"

    def dsn(self, dbname: str = "postgres") -> str:
        """libpq connection string (for psycopg directly)."""
        return f"host=127.0.0.1 port={self.port} user=app dbname={dbname}"


def find_bindir() -> Path:
    """The newest /usr/lib/postgresql/<version>/bin holding initdb and pg_ctl (as ``fedcrm up`` finds it)."""
    try:
        return local_postgres.find_bindir()
    except CoordinatorError as exc:
        raise PostgresUnavailable(str(exc)) from None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(cmd: list[str], as_user: str | None) -> None:
    full = ["runuser", "-u", as_user, "--", *cmd] if as_user else cmd
    proc = subprocess.run(full, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise PostgresUnavailable(f"{' '.join(cmd[:1])} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")


def start_postgres(*, durable: bool = True) -> PostgresServer:
    """Start a fresh cluster; ``durable=False`` turns fsync off (tests only, never benchmarks)."""
    bindir = find_bindir()
    as_user = "postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="fedcrm-pg-"))
    if as_user:
        shutil.chown(root, user=as_user, group=as_user)
    datadir, sockdir = root / "data", root
    _run([str(bindir / "initdb"), "-D", str(datadir), "-U", "app", "-A", "trust", "--no-sync"], as_user)
    port = _free_port()
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {sockdir}"
    if not durable:
        opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    _run([str(bindir / "pg_ctl"), "-D", str(datadir), "-o", opts, "-l", str(root / "server.log"), "-w", "start"], as_user)
    pid = int((datadir / "postmaster.pid").read_text().splitlines()[0])
    return PostgresServer(bindir=bindir, root=root, port=port, pid=pid, as_user=as_user)


def stop_postgres(server: PostgresServer) -> None:
    """Stop the server (fast shutdown), make sure its postmaster PID is gone, delete its files."""
    try:
        _run([str(server.bindir / "pg_ctl"), "-D", str(server.datadir), "-m", "fast", "-w", "stop"], server.as_user)
    except PostgresUnavailable:
        pass  # checked below by PID
    deadline = time.monotonic() + 15
    while local_postgres.process_alive(server.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if local_postgres.process_alive(server.pid):
        os.kill(server.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while local_postgres.process_alive(server.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    shutil.rmtree(server.root, ignore_errors=True)
    if local_postgres.process_alive(server.pid):
        raise PostgresUnavailable(f"postmaster {server.pid} is still running after stop")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL for the test session (fsync off: tests check behaviour, not durability)."""
    try:
        server = start_postgres(durable=False)
    except PostgresUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        stop_postgres(server)


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """SQLAlchemy URL of the session server's ``postgres`` database."""
    return postgres_server.url("postgres")
