"""Run a real fedcrm HTTP API (``fedcrm … serve``) on loopback for a test, and schemathesis against it.

Shared by the API test modules (the consent API today, the operator API next): one place that
starts the server process on a free 127.0.0.1 port, waits until it answers, reads what it
listens on from the kernel's socket table, and stops it by PID; and one runner that drives the
schemathesis CLI (`st run`) with a token per operation and reads the statuses back from its
NDJSON report.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

__all__ = ["FUZZ_CHECKS", "FuzzResult", "ServedAPI", "free_port", "listening_sockets", "run_schemathesis", "serve_api"]

FEDCRM = str(Path(sys.executable).with_name("fedcrm"))
SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))

#: The checks every API must pass: no 5xx, every status / content type / header / body as documented,
#: and input that violates the schema refused with a 4xx. (``positive_data_acceptance`` is left out
#: on purpose: schema-valid requests may still be refused for what they mean, e.g. ``end`` before ``start``.)
FUZZ_CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServedAPI:
    """A running API server: its base URL, process and combined stdout/stderr log file."""

    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        """Everything the server printed so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=15)


@contextmanager
def serve_api(
    args: Sequence[str],
    *,
    port: int,
    log_path: Path,
    ready_path: str = "/openapi.json",
    timeout: float = 90.0,
    env: Mapping[str, str] | None = None,
) -> Iterator[ServedAPI]:
    """Start ``fedcrm <args>`` (which must listen on ``127.0.0.1:port``), wait for ``ready_path``, stop by PID."""
    base_url = f"http://127.0.0.1:{port}"
    environment = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "NO_COLOR": "1", **(env or {})}
    with log_path.open("wb") as log:
        process = subprocess.Popen([FEDCRM, *args], stdout=log, stderr=subprocess.STDOUT, env=environment)
    served = ServedAPI(base_url, process, log_path)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"`fedcrm {' '.join(args)}` exited with {process.returncode}:\n{served.log()}")
            try:
                if httpx.get(base_url + ready_path, timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"`fedcrm {' '.join(args)}` did not answer within {timeout:.0f}s:\n{served.log()}")
            time.sleep(0.2)
        yield served
    finally:
        _stop(process)


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _address(hex_address: str) -> tuple[str, int]:
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        ip = socket.inet_ntop(socket.AF_INET, raw[::-1])
    else:  # /proc/net/tcp6 stores four little-endian 32-bit words
        ip = socket.inet_ntop(socket.AF_INET6, b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))
    return ip, int(port, 16)


def listening_sockets(pid: int) -> list[tuple[str, int]]:
    """The (address, port) pairs process ``pid`` listens on, read from /proc/net/tcp and tcp6."""
    inodes = _socket_inodes(pid)
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A: TCP_LISTEN
                found.append(_address(cols[1]))
    return sorted(found)


@dataclass
class FuzzResult:
    """What a schemathesis run did: its exit code, output, responses by status, and failures."""

    returncode: int
    output: str
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid TOML basic string


def _read_ndjson(path: Path, result: FuzzResult) -> None:
    # Walk every event generically: the status of each response and the title of each failed check.
    def walk(node: object) -> None:
        if isinstance(node, dict):
            status = node.get("status_code")
            if isinstance(status, int) and "elapsed" in node:
                result.statuses[status] += 1
            info = node.get("failure_info")
            if isinstance(info, dict) and isinstance(info.get("failure"), dict):
                failure = info["failure"]
                text = f"{failure.get('operation')}: {failure.get('title')}: {failure.get('message')}"
                if text not in result.failures:
                    result.failures.append(text)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            walk(json.loads(line))


def run_schemathesis(
    base_url: str,
    *,
    work_dir: Path,
    headers: Mapping[tuple[str, str], Mapping[str, str]],
    max_examples: int,
    seed: int = 1,
    phases: Sequence[str] = ("examples", "coverage", "fuzzing"),
    checks: Sequence[str] = FUZZ_CHECKS,
    timeout: float = 1200.0,
) -> FuzzResult:
    """Run ``st run`` against ``base_url/openapi.json``; ``headers`` maps ``(METHOD, path)`` to headers.

    Each operation gets its own headers (e.g. the token of the role that may call it), set per
    operation in a generated ``schemathesis.toml``.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    config = []
    for (method, path), values in headers.items():
        config.append("[[operations]]")
        # One name filter: separate method and path filters would be OR-ed (every GET would match).
        config.append(f"include-name = {_toml_string(f'{method} {path}')}")
        config.append("headers = { " + ", ".join(f"{_toml_string(k)} = {_toml_string(v)}" for k, v in values.items()) + " }")
        config.append("")
    config_path = work_dir / "schemathesis.toml"
    config_path.write_text("\n".join(config), encoding="utf-8")
    os.chmod(config_path, 0o600)  # it holds tokens
    ndjson = work_dir / "events.ndjson"
    command = [
        SCHEMATHESIS, "--config-file", str(config_path), "--no-color", "run", f"{base_url}/openapi.json",
        "--checks", ",".join(checks), "--phases", ",".join(phases), "--max-examples", str(max_examples),
        "--seed", str(seed), "--workers", "1", "--request-timeout", "60", "--suppress-health-check", "all",
        "--report", "ndjson", "--report-ndjson-path", str(ndjson), "--output-truncate", "true",
        "--generation-database", "none",
    ]
    environment = {**os.environ, "NO_COLOR": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment, cwd=work_dir)
    result = FuzzResult(done.returncode, done.stdout + done.stderr)
    (work_dir / "output.txt").write_text(result.output, encoding="utf-8")
    if ndjson.exists():
        _read_ndjson(ndjson, result)
    return result
