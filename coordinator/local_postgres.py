"""A PostgreSQL server from Debian's packages for the coordinator's registry in `fedcrm up`.

`fedcrm up` runs the deployment topology as processes on 127.0.0.1; its registry database is
the same kind compose runs (PostgreSQL), from the ``postgresql`` apt package's binaries
(``/usr/lib/postgresql/<version>/bin``), not a container. The cluster lives in
``<stack dir>/registry-db/`` and survives ``fedcrm down``/``up`` (it is the registry's data):
``initdb`` once, then ``pg_ctl start`` on 127.0.0.1 and a socket in that directory, a
``registry`` database, trust authentication limited to 127.0.0.1 and the socket (the only
client is the operator's own coordinator on this machine). ``initdb`` refuses to run as
root, so as root the directory is handed to the ``postgres`` user and the server runs as
that user (``runuser``); when that user cannot reach ``<stack dir>`` (a stack under root's own
0700 directories), the cluster goes to ``/var/lib/postgresql/fedcrm/<hash of the stack dir>``
instead and ``<stack dir>/registry-db/LOCATION`` names it. Stopping is ``pg_ctl stop -m fast`` (a clean shutdown, no recovery on
the next start).
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from fedcrm.errors import CoordinatorError

INSTALL_HINT = "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: run `apt-get install postgresql`"
DATABASE = "registry"
USER = "fedcrm"


@dataclass(frozen=True)
class LocalPostgres:
    """A running cluster: where its files are, where it listens, its postmaster PID."""

    root: Path
    port: int
    pid: int

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the registry database (``FEDCRM_REGISTRY_URL``)."""
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{DATABASE}"


def find_bindir() -> Path:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding ``initdb`` and ``pg_ctl``."""
    found = [Path(d) for d in glob.glob("/usr/lib/postgresql/*/bin")
             if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists()]
    if not found:
        raise CoordinatorError(INSTALL_HINT)
    return max(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)


def _server_user() -> str | None:
    return "postgres" if os.geteuid() == 0 else None


#: Where clusters go when the server user cannot reach the stack directory (Debian's postgres home).
FALLBACK_ROOT = Path("/var/lib/postgresql/fedcrm")
LOCATION_FILE = "LOCATION"


def cluster_dir(root: Path) -> Path:
    """The directory that holds the cluster of stack directory ``root`` (see the module docstring)."""
    root = root.resolve()
    pointer = root / LOCATION_FILE
    if pointer.exists():
        return Path(pointer.read_text().strip())
    as_user = _server_user()
    if as_user is None or _reachable(root.parent, as_user):
        return root
    return FALLBACK_ROOT / hashlib.sha256(str(root).encode()).hexdigest()[:16]


def _reachable(directory: Path, as_user: str) -> bool:
    done = subprocess.run(["runuser", "-u", as_user, "--", "test", "-x", str(directory)], capture_output=True)
    return done.returncode == 0


def _run(cmd: list[str], as_user: str | None, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    full = ["runuser", "-u", as_user, "--", *cmd] if as_user else cmd
    done = subprocess.run(full, capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        raise CoordinatorError(f"{Path(cmd[0]).name} failed (exit {done.returncode}): "
                               f"{(done.stderr or done.stdout).strip()[-500:]}")
    return done.stdout


def _postmaster_pid(datadir: Path) -> int | None:
    try:
        return int((datadir / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


def process_alive(pid: int) -> bool:
    """Whether ``pid`` exists (it may belong to the server user: a permission error means it does)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_local_postgres(root: Path, port: int, env: dict[str, str] | None = None) -> LocalPostgres:
    """Start (creating on first use) the registry cluster in ``root`` on 127.0.0.1:``port``.

    ``env`` is the server's environment (``fedcrm up`` adds its marker variable, so ``down``
    finds every backend by it).

    Raises
    ------
    CoordinatorError
        The binaries are missing, or initdb / start / database creation failed (naming which).
    """
    bindir = find_bindir()
    as_user = _server_user()
    stack_root = root.resolve()
    root = cluster_dir(stack_root)
    if root != stack_root:
        stack_root.mkdir(parents=True, exist_ok=True)
        (stack_root / LOCATION_FILE).write_text(f"{root}\n")
        root.parent.mkdir(parents=True, exist_ok=True)
        if as_user:
            shutil.chown(root.parent, user=as_user, group=as_user)
    datadir = root / "data"
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    if as_user:
        shutil.chown(root, user=as_user, group=as_user)
    if not (datadir / "PG_VERSION").exists():
        _run([str(bindir / "initdb"), "-D", str(datadir), "-U", USER, "-A", "trust", "-E", "UTF8"], as_user, env)
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root}"
    _run([str(bindir / "pg_ctl"), "-D", str(datadir), "-o", options, "-l", str(root / "server.log"), "-w",
          "-t", "120", "start"], as_user, env, timeout=180)
    pid = _postmaster_pid(datadir)
    if pid is None:
        raise CoordinatorError(f"PostgreSQL in {datadir} started but wrote no postmaster.pid (log: {root / 'server.log'})")
    server = LocalPostgres(root, port, pid)
    psql = [str(bindir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", USER, "-d", "postgres", "-Atc"]
    exists = _run([*psql, f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"], as_user, env).strip()
    if exists != "1":
        _run([*psql, f"CREATE DATABASE {DATABASE}"], as_user, env)
    return server


def stop_local_postgres(root: Path, grace_s: float = 30.0) -> int | None:
    """Stop the cluster in ``root`` cleanly (``pg_ctl stop -m fast``); returns a PID that survived, if any."""
    datadir = cluster_dir(root) / "data"
    pid = _postmaster_pid(datadir)
    if pid is None or not process_alive(pid):
        return None
    try:
        _run([str(find_bindir() / "pg_ctl"), "-D", str(datadir), "-m", "fast", "-w", "-t", str(int(grace_s)), "stop"],
             _server_user(), timeout=grace_s + 30)
    except CoordinatorError:
        pass  # checked by PID below
    deadline = time.monotonic() + grace_s
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return pid if process_alive(pid) else None
