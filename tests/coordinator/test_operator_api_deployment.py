"""The operator API starts a run on the deployment engine: `serve --superlink` fixes the SuperLink, the caller
only says how many partners join; three real `fedcrm client join` partners finish it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fedcrm.coordinator.api import create_app
from fedcrm.coordinator.api_tokens import create_operator_token
from fedcrm.coordinator.operator_runs import DeploymentTarget
from fedcrm.coordinator.registry_db import open_registry, registry_url
from fedcrm.paths import DATASETS
from tests.deploy.stack import deployment_stack, flower_processes
from tests.federation import copy_partners

pytestmark = pytest.mark.slow

TASK = DATASETS / "tasks" / "telco_churn.yaml"


def test_a_run_started_through_the_api_runs_on_the_served_superlink(tmp_path: Path) -> None:
    configs = copy_partners(tmp_path / "partners")
    runs = tmp_path / "runs"
    url = registry_url(None, runs)
    runs.mkdir()
    engine = open_registry(url)
    tokens = tmp_path / "tokens.json"
    op = {"Authorization": f"Bearer {create_operator_token(tokens, 'operator', 'ops-1')}"}
    with deployment_stack(tmp_path, configs) as stack:
        client = TestClient(create_app(engine, tokens_path=tokens, runs_dir=runs, registry_url=url,
                                       deployment=DeploymentTarget(stack.link.address, None)))
        # The served engine decides the shape of the request: partner files are refused here.
        r = client.post("/runs", json={"partners": [str(c) for c in configs], "config": {"task": str(TASK)}},
                        headers=op)
        assert r.status_code == 422 and stack.link.address in r.json()["detail"]
        r = client.post("/runs", json={"num_partners": 3, "config": {"task": str(TASK), "rounds": 1, "seed": 0,
                                                                      "run_id": "api-deploy"}}, headers=op)
        assert r.status_code == 202, r.text
        started = r.json()
        assert started["run_id"] == "api-deploy" and started["status"] == "starting"
        deadline = time.monotonic() + 600
        run: dict = {}
        while time.monotonic() < deadline:
            run = client.get("/runs/api-deploy", headers=op).json()
            if run["status"] not in ("starting", "running"):
                break
            time.sleep(1.0)
        log = (runs / ".operator" / "api-deploy.run.log").read_text()
        assert run["status"] == "completed", f"{run}\n{log[-3000:]}"
        rounds = client.get("/runs/api-deploy/rounds", headers=op).json()
        assert [r["round"] for r in rounds] == [1]
        assert sorted(p["partner"] for p in rounds[-1]["partners"]) == ["A", "B", "C"]
        # It ran on the deployment engine: a `flwr run` submission to the served SuperLink, no partner paths.
        run_dir = runs / "api-deploy"
        assert (run_dir / "flwr_run.log").exists() and not (run_dir / "engine.log").exists()
        assert stack.link.address in (run_dir / "flwr_home" / "config.toml").read_text()
        assert "partner-config" not in (run_dir / "flower_app" / "pyproject.toml").read_text()
        stack.stop_joins()
    assert not stack.leftover
    assert not flower_processes(tmp_path)
