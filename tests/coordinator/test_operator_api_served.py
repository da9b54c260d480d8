"""The real `fedcrm coordinator serve` on loopback: schemathesis against it, and its access log.

One server per module (a registry indexing run directories the recorder wrote, a token per
role, the default host), stopped by PID at the end (:mod:`tests.api_server`, shared with the
consent API's tests).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fedcrm.coordinator.api_tokens import create_operator_token
from tests.api_server import TokenServer, fuzz_every_operation, listening_sockets, serve_with_tokens
from tests.coordinator.registry_runs import write_run

pytestmark = pytest.mark.slow

#: Which role's token each operation is fuzzed with (the role that may call it).
ROLE_OF = {
    ("GET", "/runs"): "viewer",
    ("POST", "/runs"): "operator",
    ("GET", "/runs/{run_id}"): "viewer",
    ("GET", "/runs/{run_id}/rounds"): "viewer",
    ("POST", "/runs/{run_id}/stop"): "operator",
    ("POST", "/runs/{run_id}/resume"): "operator",
    ("GET", "/partners"): "viewer",
    ("GET", "/models"): "viewer",
    ("GET", "/models/{model_id}"): "viewer",
    ("GET", "/models/{model_id}/lineage"): "viewer",
    ("POST", "/models/{model_id}/promote"): "operator",
    ("GET", "/models/{model_id}/download"): "viewer",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    root = tmp_path_factory.mktemp("operator-serve")
    runs = root / "runs"
    write_run(runs, "20261201T000000Z-aaaaaa", rounds=3, seed=1, dp=True)
    write_run(runs, "20261201T010000Z-bbbbbb", rounds=2, seed=2, dropout=(2, "B"), outcome="killed")
    tokens_path = root / "secrets" / "tokens.json"
    tokens = {role: create_operator_token(tokens_path, role, f"{role}-1") for role in ("operator", "viewer")}
    args = ["coordinator", "serve", "--tokens", str(tokens_path), "--runs-dir", str(runs)]
    with serve_with_tokens(args, tokens, log_path=root / "server.log") as served:
        yield served


def test_serve_listens_on_loopback_only_by_default(server: TokenServer) -> None:
    assert listening_sockets(server.api.process.pid) == [("127.0.0.1", server.api.port)]


def test_schemathesis_finds_no_5xx_and_no_schema_violation(server: TokenServer, tmp_path: Path) -> None:
    fuzz_every_operation(server, ROLE_OF, tmp_path / "st", max_examples=40, timeout=900)
    # Fuzzing started nothing and the server still answers.
    runs = httpx.get(server.api.base_url + "/runs", headers=server.auth("viewer"), timeout=30).json()
    assert sorted(r["run_id"] for r in runs) == ["20261201T000000Z-aaaaaa", "20261201T010000Z-bbbbbb"]


def test_the_access_log_holds_route_templates_not_ids_or_tokens(server: TokenServer) -> None:
    base = server.api.base_url
    httpx.get(base + "/runs/20261201T000000Z-aaaaaa/rounds", headers=server.auth("viewer"), timeout=30)
    httpx.get(base + f"/runs?token={server.tokens['viewer']}", timeout=30)
    time.sleep(0.5)
    log = server.api.log()
    assert "route=/runs/{run_id}/rounds" in log
    assert "20261201T000000Z-aaaaaa/rounds" not in log
    for secret in server.tokens.values():
        assert secret not in log
