"""`fedcrm up` / `fedcrm down`: the deployment topology as real processes on 127.0.0.1.

The same parts as docker-compose.yml, without containers: the coordinator's registry
database (PostgreSQL from Debian's packages, :mod:`fedcrm.coordinator.local_postgres`, its
cluster kept in ``<dir>/registry-db`` across ``down``/``up``), a SuperLink with TLS (from
``fedcrm certs``) and SuperNode authentication, three partners (the bundled skewed Telco
partners, each initialised, approving the task, its node key registered with
``fedcrm coordinator partners add``) each joining with ``fedcrm client join`` over TLS.
Every process is started in its own session and recorded in ``<dir>/stack.json`` with
its PID and the marker its environment carries, so ``down`` stops exactly what ``up``
started (and whatever those processes started), by PID, and nothing else.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from fedcrm._offline import OFFLINE_ENV
from fedcrm.certs import CA_CERT, issue
from fedcrm.coordinator.local_postgres import DATABASE, USER, start_local_postgres, stop_local_postgres
from fedcrm.coordinator.partners import add_partner, live_nodes, read_registry, restore_partners
from fedcrm.coordinator.processes import MARKER_VAR, processes_with_marker, stop_marked, stop_processes
from fedcrm.coordinator.superlink import free_port, start_superlink
from fedcrm.errors import CoordinatorError
from fedcrm.paths import DATASETS

STATE_FILE = "stack.json"
REGISTRY_DB = "registry-db"
PARTNERS = ("A", "B", "C")
TASK = DATASETS / "tasks" / "telco_churn.yaml"


@dataclass
class Part:
    """One process of the stack."""

    name: str
    pid: int
    marker: str
    listens: str
    log: str


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "fedcrm.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **OFFLINE_ENV, "COLUMNS": "200"})
    if done.returncode != 0:
        raise CoordinatorError(f"`fedcrm {' '.join(args[:2])}` failed: {(done.stdout + done.stderr).strip()[-800:]}")
    return done


def read_stack(directory: Path) -> list[Part]:
    path = directory / STATE_FILE
    if not path.exists():
        return []
    return [Part(**p) for p in json.loads(path.read_text())["parts"]]


def _alive(part: Part) -> bool:
    return bool(processes_with_marker(part.marker))


def prepare_partners(directory: Path) -> list[Path]:
    """Bundled partners copied under ``directory/partners``, initialised and approving the task (once)."""
    configs = []
    for name in PARTNERS:
        target = directory / "partners" / name
        config = target / "partner.toml"
        if not config.exists():
            shutil.copytree(DATASETS / "partners" / "telco" / "skewed" / name, target)
        if not (target / "partner.key").exists():
            _cli("client", "init", "--config", str(config))
            _cli("client", "approve", "--config", str(config), "--task", str(TASK), "--by", "fedcrm up")
        configs.append(config)
    return configs


def up(directory: Path, timeout_s: float = 300.0) -> list[Part]:
    """Start the stack in ``directory``; refuses if a stack started there is still running."""
    directory = directory.resolve()
    if any(_alive(p) for p in read_stack(directory)):
        raise CoordinatorError(f"a stack is already running from {directory} (`fedcrm down --dir {directory}`)")
    directory.mkdir(parents=True, exist_ok=True)
    tls = directory / "tls"
    if not (tls / CA_CERT).exists():
        issue(tls, ["127.0.0.1", "localhost"])
    configs = prepare_partners(directory)
    parts: list[Part] = []
    try:
        marker = uuid.uuid4().hex
        db = start_local_postgres(directory / REGISTRY_DB, free_port(), env={**os.environ, MARKER_VAR: marker})
        parts.append(Part(REGISTRY_DB, db.pid, marker, f"127.0.0.1:{db.port}", str(db.root / "server.log")))
        _save(directory, parts)
        link = start_superlink(directory / "superlink", tls_dir=tls, node_auth=True)
        parts.append(Part("superlink", link.pid, link.marker, link.address, str(link.state_dir / "superlink.log")))
        _save(directory, parts)
        registry = directory / "partners.json"
        # The SuperLink's state is in memory: keys registered before a restart are registered again.
        known = {e.name for e in restore_partners(link.address, tls / CA_CERT, registry)}
        for config in configs:
            name = config.parent.name
            if name not in known:
                add_partner(name, config.parent / "node.key.pub", link.address, tls / CA_CERT, registry)
        for config in configs:
            port = free_port()
            marker = uuid.uuid4().hex
            log_path = config.parent / "join.log"
            with log_path.open("ab") as log:
                process = subprocess.Popen(
                    [sys.executable, "-m", "fedcrm.cli", "client", "join", "--config", str(config),
                     "--superlink", link.address, "--port", str(port), "--root-certificates", str(tls / CA_CERT)],
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                    env={**os.environ, **OFFLINE_ENV, MARKER_VAR: marker})
            parts.append(Part(f"partner {config.parent.name}", process.pid, marker, f"127.0.0.1:{port}",
                              str(log_path)))
            _save(directory, parts)
        _wait_online(directory, parts, link.address, tls / CA_CERT, timeout_s)
    except BaseException:
        down(directory)
        raise
    return parts


def _wait_online(directory: Path, parts: list[Part], superlink: str, ca: Path, timeout_s: float) -> None:
    registry = read_registry(directory / "partners.json")
    deadline = time.monotonic() + timeout_s
    while True:
        nodes = live_nodes(superlink, ca)
        online = {name for name, e in registry.items() if nodes.get(e.node_id, {}).get("status") == "online"}
        if online == set(PARTNERS):
            return
        for part in parts:
            if not _alive(part):
                raise CoordinatorError(f"{part.name} exited during start-up (log: {part.log})")
        if time.monotonic() > deadline:
            raise CoordinatorError(f"partners online after {timeout_s:.0f} s: {sorted(online) or 'none'}")
        time.sleep(1.0)


def _save(directory: Path, parts: list[Part]) -> None:
    tmp = directory / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps({"parts": [asdict(p) for p in parts]}, indent=2) + "\n")
    os.replace(tmp, directory / STATE_FILE)


def down(directory: Path, grace_s: float = 15.0) -> set[int]:
    """Stop every process ``up`` started from ``directory`` (partners first); returns survivors."""
    directory = directory.resolve()
    parts = read_stack(directory)
    survivors: set[int] = set()
    for part in reversed(parts):  # partners, then the SuperLink, then the registry database
        if part.name == REGISTRY_DB:
            survived = stop_local_postgres(directory / REGISTRY_DB, grace_s)
            survivors |= {survived} if survived else set()
            continue
        # Only while the PID still carries the part's marker: a part that died earlier left its PID free for
        # reuse (PIDs wrap at pid_max, 32,768 on small machines), and signalling it would hit a stranger.
        if part.pid in processes_with_marker(part.marker):
            try:
                os.kill(part.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and processes_with_marker(part.marker):
            time.sleep(0.2)
        survivors |= stop_marked(part.marker, grace_s)
        survivors |= stop_processes({p for p in processes_with_marker(part.marker)}, grace_s)
    (directory / STATE_FILE).unlink(missing_ok=True)
    (directory / "superlink" / "superlink.pid").unlink(missing_ok=True)
    return survivors


def registry_url(directory: Path) -> str | None:
    """SQLAlchemy URL of the running stack's registry database (None when no stack runs there)."""
    db = next((p for p in read_stack(directory.resolve()) if p.name == REGISTRY_DB), None)
    return f"postgresql+psycopg://{USER}@{db.listens}/{DATABASE}" if db is not None else None


def run_on_stack(directory: Path, rounds: int, seed: int = 0):  # type: ignore[no-untyped-def]
    """A SecAgg+ run of the bundled Telco task through the running stack."""
    from fedcrm.coordinator.deployment import run_deployment
    from fedcrm.coordinator.run_config import RunConfig

    parts = read_stack(directory.resolve())
    link = next((p for p in parts if p.name == "superlink"), None)
    if link is None or not _alive(link):
        raise CoordinatorError(f"no stack running from {directory} (`fedcrm up --dir {directory}`)")
    cfg = RunConfig.model_validate({"task": TASK, "rounds": rounds, "seed": seed})
    return run_deployment(cfg, len(PARTNERS), link.listens, directory.resolve() / "runs",
                          root_certificates=directory.resolve() / "tls" / CA_CERT)
