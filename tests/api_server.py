"""Run a real fedcrm HTTP API (``fedcrm … serve``) on loopback for a test, and schemathesis against it.

Shared by the API test modules (the consent API and the operator API): one place that
starts the server process on a free 127.0.0.1 port, waits until it answers, reads what it
listens on from the kernel's socket table, and stops it by PID (:func:`serve_with_tokens`
does that for a server given a token per role); one runner that drives the schemathesis CLI
(`st run`) with a token per operation and reads the statuses back from its NDJSON report; and
:func:`fuzz_every_operation`, the schemathesis test both APIs must pass.
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

from tests.socket_table import listening_sockets

__all__ = ["FUZZ_CHECKS", "FuzzResult", "ServedAPI", "TokenServer", "free_port", "fuzz_every_operation",
           "listening_sockets", "run_schemathesis", "serve_api", "serve_with_tokens"]

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

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])


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


@dataclass
class TokenServer:
    """A served API and the secret token of each role it was given."""

    api: ServedAPI
    tokens: dict[str, str]

    def auth(self, role: str) -> dict[str, str]:
        """The Authorization header of ``role``'s token."""
        return {"Authorization": f"Bearer {self.tokens[role]}"}


@contextmanager
def serve_with_tokens(args: Sequence[str], tokens: Mapping[str, str], *, log_path: Path) -> Iterator[TokenServer]:
    """``fedcrm <args> --port <a free port>`` (no ``--host``: the default must be loopback), stopped by PID."""
    port = free_port()
    with serve_api([*args, "--port", str(port)], port=port, log_path=log_path) as api:
        yield TokenServer(api, dict(tokens))


def fuzz_every_operation(
    server: TokenServer,
    role_of: Mapping[tuple[str, str], str],
    work_dir: Path,
    *,
    max_examples: int,
    timeout: float = 1200.0,
) -> FuzzResult:
    """Schemathesis over every operation of the served OpenAPI document, each with its role's token.

    Fails unless ``role_of`` names exactly the operations served, some requests were made, none
    was answered 5xx and no check failed.
    """
    spec = httpx.get(server.api.base_url + "/openapi.json", timeout=30).json()
    operations = {(method.upper(), path) for path, item in spec["paths"].items() for method in item}
    assert operations == set(role_of), f"give these operations a role to be fuzzed with: {operations ^ set(role_of)}"
    headers = {op: server.auth(role) for op, role in role_of.items()}
    result = run_schemathesis(server.api.base_url, work_dir=work_dir, headers=headers, max_examples=max_examples,
                              timeout=timeout)
    assert result.requests > 0, result.output[-3000:]
    assert result.server_errors == 0, (result.statuses, result.output[-6000:])
    assert result.failures == [], result.output[-6000:]
    assert result.returncode == 0, result.output[-6000:]
    print(f"schemathesis: {result.requests} requests, statuses {dict(sorted(result.statuses.items()))}")
    return result
