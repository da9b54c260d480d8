"""Real containers for the compose test: podman + Debian's docker-compose, as measured here.

See ../shared/notes/containers.md for why each piece is needed:

- podman with runc, cgroupfs and capped ulimits through our own ``containers.conf``
  (crun cannot start containers on these machines);
- ``podman system service`` on a unix socket in the test's directory, which Debian's
  ``docker-compose`` 1.29 drives as if it were Docker (``DOCKER_HOST``);
- a loop running ``podman healthcheck run`` (no systemd timers here), stopped with the test;
- the base image built from Debian's archive with ``mmdebstrap`` (no image registry is
  reachable), and Python packages from a wheelhouse built on the host with the project's
  constraints, so the image build itself runs with ``--network none``.

Both the base image tarball and the wheelhouse are cached under ``/var/cache/fedcrm``
(override with ``FEDCRM_CACHE``), keyed by a hash of what they are made from, so later runs
on one machine reuse them; a fresh machine builds them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.socket_table import listening_table, socket_inodes

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("FEDCRM_CACHE", "/var/cache/fedcrm"))
SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
#: The registry database of the compose test: Debian's PostgreSQL in an image of its own (no registry here).
POSTGRES_PACKAGES = ("postgresql", "ca-certificates")
#: Installed with --no-deps in the image (docker/Dockerfile, Makefile): it pins protobuf exactly.
PSI_REQUIREMENT = "openmined.psi==2.0.6"
TOOLS = ("podman", "runc", "docker-compose", "mmdebstrap")
INSTALL_HINT = "install them with `bash .ci/install-containers.sh` (root), as `make test` does"
CONTAINERS_CONF = """[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


def debian_mirror() -> str:
    """The Debian mirror apt already uses on this machine (deb822 or one-line sources)."""
    for path in [Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"),
                 *sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))]:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            line = line.strip()
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
            if line.startswith("deb ") and "security" not in line:
                return next(p for p in line.split()[1:] if "://" in p)
    return "http://deb.debian.org/debian"


def _digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]


@dataclass
class Timings:
    """Seconds per step, for the report."""

    steps: dict[str, float] = field(default_factory=dict)

    def measure(self, name: str, started: float) -> None:
        self.steps[name] = round(time.monotonic() - started, 1)


@dataclass
class Podman:
    """A podman set-up private to one test: config, runtime state and API socket in ``work``."""

    work: Path
    graphroot: Path = CACHE / "containers" / "storage"
    service: subprocess.Popen[bytes] | None = None
    health_stop: threading.Event = field(default_factory=threading.Event)
    health_thread: threading.Thread | None = None
    killed_leftovers: list[int] = field(default_factory=list)
    leftover_commands: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "containers.conf").write_text(CONTAINERS_CONF)
        # Short runroot: podman's sockets have a path-length limit.
        self.runroot = Path(f"/tmp/fedcrm-podman-{uuid.uuid4().hex[:8]}")
        (self.work / "storage.conf").write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{self.graphroot}"\nrunroot = "{self.runroot}"\n')
        self.socket = self.work / "podman.sock"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "CONTAINERS_CONF": str(self.work / "containers.conf"),
                "CONTAINERS_STORAGE_CONF": str(self.work / "storage.conf"),
                "DOCKER_HOST": f"unix://{self.socket}", "COMPOSE_INTERACTIVE_NO_CLI": "1",
                "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}

    def run(self, *args: str, timeout: float = 600, check: bool = True, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=env or self.env,
                              cwd=cwd)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(args[:4])} … exited {done.returncode}:\n{done.stdout[-3000:]}\n"
                                 f"{done.stderr[-3000:]}")
        return done

    def podman(self, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return self.run("podman", *args, **kw)  # type: ignore[arg-type]

    def start_service(self) -> None:
        self.graphroot.mkdir(parents=True, exist_ok=True)
        # podman keeps the run root it first used with a graph root in that graph root's database and
        # uses it ever after, whatever storage.conf says: find the effective one, where conmon leaves traces.
        effective = self.podman("info", "--format", "{{.Store.RunRoot}}", check=False).stdout.strip()
        if effective:
            self.runroot = Path(effective)
        log = (self.work / "podman-service.log").open("wb")
        self.service = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{self.socket}"],
                                        env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not self.socket.exists():
            if self.service.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"podman system service did not start: {(self.work / 'podman-service.log').read_text()}")
            time.sleep(0.2)

    def start_healthchecks(self, interval_s: float = 3.0) -> None:
        """Run each container's health check every few seconds (podman relies on systemd timers for it)."""

        def loop() -> None:
            while not self.health_stop.wait(interval_s):
                ids = self.podman("ps", "-q", "--filter", "health=starting", check=False).stdout.split()
                ids += self.podman("ps", "-q", "--filter", "health=healthy", check=False).stdout.split()
                ids += self.podman("ps", "-q", "--filter", "health=unhealthy", check=False).stdout.split()
                for cid in dict.fromkeys(ids):
                    self.podman("healthcheck", "run", cid, check=False, timeout=60)

        self.health_thread = threading.Thread(target=loop, name="podman-healthchecks", daemon=True)
        self.health_thread.start()

    def stop(self) -> None:
        """Stop the health-check loop and the API service (by PID); remove the runtime directory."""
        self.health_stop.set()
        if self.health_thread is not None:
            self.health_thread.join(timeout=90)
        if self.service is not None and self.service.poll() is None:
            self.service.send_signal(signal.SIGTERM)
            try:
                self.service.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.service.kill()
                self.service.wait(timeout=30)
        # An `exec` whose client was killed (a timeout) leaves its conmon behind: ours carry our runroot.
        self.killed_leftovers = self.leftover_pids()
        self.leftover_commands = {pid: _cmdline(pid) for pid in self.killed_leftovers}
        for pid in self.killed_leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.runroot, ignore_errors=True)

    def leftover_pids(self) -> list[int]:
        """Live processes whose command line names this set-up's runtime directory."""
        needle = str(self.runroot).encode()
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                try:
                    if needle in (entry / "cmdline").read_bytes():
                        found.append(int(entry.name))
                except OSError:
                    continue
        return found

    def health(self, name: str) -> str:
        out = self.podman("inspect", "--format", "{{.State.Health.Status}}", name, check=False).stdout.strip()
        return out or "missing"

    def pid(self, name: str) -> int:
        return int(self.podman("inspect", "--format", "{{.State.Pid}}", name).stdout.strip())


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:300]
    except OSError:
        return "?"


def base_image(podman: Podman, timings: Timings, packages: tuple[str, ...] = BASE_PACKAGES,
               name: str = "fedcrm-base") -> str:
    """``localhost/<name>:<key>``: Debian bookworm minbase + ``packages``, from the archive (cached)."""
    mirror = debian_mirror()
    key = _digest(SUITE, ",".join(packages), mirror, "minbase")
    tag = f"localhost/{name}:{key}"
    if podman.podman("image", "exists", tag, check=False).returncode == 0:
        return tag
    tarball = CACHE / "base" / f"{SUITE}-{key}.tar"
    if not tarball.exists():
        started = time.monotonic()
        tarball.parent.mkdir(parents=True, exist_ok=True)
        partial = tarball.with_name(f".{tarball.name}.{uuid.uuid4().hex[:8]}.tar")
        try:
            podman.run("mmdebstrap", "--quiet", "--variant=minbase", f"--include={','.join(packages)}",
                       SUITE, str(partial), mirror, timeout=1200)
            os.replace(partial, tarball)
        finally:
            partial.unlink(missing_ok=True)
        timings.measure(f"mmdebstrap {name} rootfs", started)
    started = time.monotonic()
    podman.podman("import", str(tarball), tag, timeout=600)
    timings.measure(f"podman import {name}", started)
    return tag


def wheelhouse(timings: Timings) -> Path:
    """Wheels for everything the image installs, downloaded with the project's constraints (cached)."""
    pyproject = (REPO / "pyproject.toml").read_bytes()
    requirements = tomllib.loads(pyproject.decode())["project"]["dependencies"]
    constraints = (REPO / "constraints.txt").read_bytes()
    key = _digest(json.dumps(requirements), constraints, sys.version.split()[0][:4], PSI_REQUIREMENT)
    target = CACHE / "wheelhouse" / key
    if (target / ".complete").exists():
        return target
    started = time.monotonic()
    partial = target.with_name(f".{key}.{uuid.uuid4().hex[:8]}")
    partial.mkdir(parents=True)
    try:
        reqs = partial / "requirements.txt"
        reqs.write_text("\n".join(requirements) + "\n")
        pip = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary", ":all:", "-d", str(partial)]
        subprocess.run([*pip, "torch==2.13.0"], check=True, capture_output=True, timeout=1200)
        subprocess.run([*pip, "-c", str(REPO / "constraints.txt"), "-r", str(reqs), "setuptools>=68", "wheel"],
                       check=True, capture_output=True, timeout=1200)
        subprocess.run([*pip, "--no-deps", PSI_REQUIREMENT], check=True, capture_output=True, timeout=1200)
        reqs.unlink()
        (partial / ".complete").write_text("")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(partial, target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    timings.measure("pip download wheelhouse", started)
    return target


def build_context(dest: Path, wheels: Path) -> Path:
    """The files docker/Dockerfile copies, plus the wheelhouse (hard links when possible)."""
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "constraints.txt", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.key")
    for package in ("core", "client", "consent", "coordinator", "models"):
        shutil.copytree(REPO / package, dest / package, ignore=ignore)
    shutil.copytree(REPO / "docker", dest / "docker", ignore=shutil.ignore_patterns("wheelhouse"))
    (dest / "docker" / "wheelhouse").mkdir()
    for wheel in wheels.glob("*.whl"):
        try:
            os.link(wheel, dest / "docker" / "wheelhouse" / wheel.name)
        except OSError:
            shutil.copy2(wheel, dest / "docker" / "wheelhouse" / wheel.name)
    return dest


def descendants(root_pids: set[int]) -> set[int]:
    """Every live process whose ancestry reaches one of ``root_pids`` (the roots included)."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found = set(root_pids)
    changed = True
    while changed:
        changed = False
        for pid, ppid in parent.items():
            if ppid in found and pid not in found:
                found.add(pid)
                changed = True
    return found


def listening_addresses(pids: set[int]) -> set[str]:
    """``addr:port`` of every TCP socket in LISTEN state that one of ``pids`` holds open."""
    table = listening_table()
    return {f"{table[inode][0]}:{table[inode][1]}" for pid in pids for inode in socket_inodes(pid) if inode in table}
