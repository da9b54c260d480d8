"""The operator API in-process (FastAPI TestClient): roles, errors, runs, rounds, partners, models, lineage, promotion."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fedcrm.coordinator.api import MAX_BODY_BYTES, create_app
from fedcrm.coordinator.api_tokens import create_operator_token
from fedcrm.coordinator.registry import read_events
from fedcrm.coordinator.registry_db import open_registry, registry_url
from fedcrm.coordinator.registry_index import rebuild
from tests.coordinator.registry_runs import TASK, write_run


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    root = tmp_path_factory.mktemp("operator-api")
    runs = root / "runs"
    write_run(runs, "20261201T000000Z-aaaaaa", rounds=3, seed=1, dp=True)
    write_run(runs, "20261201T010000Z-bbbbbb", rounds=4, seed=2, dropout=(2, "C"))
    url = registry_url(None, runs)
    engine = open_registry(url)
    rebuild(engine, runs)
    tokens = root / "tokens.json"
    secrets = {role: create_operator_token(tokens, role, f"{role}-1") for role in ("operator", "viewer")}
    client = TestClient(create_app(engine, tokens_path=tokens, runs_dir=runs, registry_url=url))
    return client, secrets, runs


def _auth(secrets: dict[str, str], role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secrets[role]}"}


def test_missing_unknown_and_wrong_role_tokens_are_refused(api) -> None:  # noqa: ANN001
    client, secrets, _ = api
    assert client.get("/runs").status_code == 401
    assert client.get("/runs", headers={"Authorization": "Bearer fco_nope"}).status_code == 401
    r = client.post("/models/20261201T000000Z-aaaaaa:final/promote", json={"to": "staging"},
                    headers=_auth(secrets, "viewer"))
    assert r.status_code == 403 and "viewer" in r.json()["detail"]
    assert client.post("/runs/20261201T000000Z-aaaaaa/stop", headers=_auth(secrets, "viewer")).status_code == 403
    r = client.get(f"/runs?token={secrets['viewer']}")
    assert r.status_code == 400 and "never in the URL" in r.json()["detail"]


def test_runs_and_rounds_are_what_the_run_directories_recorded(api) -> None:  # noqa: ANN001
    client, secrets, runs = api
    listed = client.get("/runs", headers=_auth(secrets, "viewer")).json()
    assert [r["run_id"] for r in listed] == ["20261201T010000Z-bbbbbb", "20261201T000000Z-aaaaaa"]
    run_id = "20261201T010000Z-bbbbbb"
    detail = client.get(f"/runs/{run_id}", headers=_auth(secrets, "viewer")).json()
    assert detail["status"] == "completed" and detail["config"]["rounds"] == 4
    rounds = client.get(f"/runs/{run_id}/rounds", headers=_auth(secrets, "viewer")).json()
    evaluates = {e["round"]: e for e in read_events(runs / run_id) if e["event"] == "evaluate"}
    for r in rounds:
        assert r["federated"]["roc_auc"] == pytest.approx(evaluates[r["round"]]["federated"]["roc_auc"])
        assert r["metric_source"] == "partners' local hold-out"
    assert rounds[1]["dropouts"][0]["partner"] == "C" and rounds[1]["evaluate_partners"] == ["A", "B"]
    assert client.get("/runs/nope", headers=_auth(secrets, "viewer")).status_code == 404
    assert client.get("/runs/bad%20id", headers=_auth(secrets, "viewer")).status_code == 422


def test_partners_models_lineage_promotion_and_download(api) -> None:  # noqa: ANN001
    client, secrets, runs = api
    partners = client.get("/partners", headers=_auth(secrets, "viewer")).json()
    c = next(p for p in partners if p["partner"] == "C")
    assert c["runs"] == ["20261201T000000Z-aaaaaa", "20261201T010000Z-bbbbbb"] and c["dropouts"] == 1
    assert c["rounds_taken_part"] == 7 and c["connected"] is False
    model_id = "20261201T000000Z-aaaaaa:final"
    models = client.get("/models", headers=_auth(secrets, "viewer")).json()
    assert model_id in [m["model_id"] for m in models]
    lineage = client.get(f"/models/{model_id}/lineage", headers=_auth(secrets, "viewer")).json()
    assert lineage["partners"] == ["A", "B", "C"] and lineage["privacy"]["differential_privacy"] is True
    op = _auth(secrets, "operator")
    r = client.post(f"/models/{model_id}/promote", json={"to": "production"}, headers=op)
    assert r.status_code == 409 and "staging" in r.json()["detail"]
    r = client.post(f"/models/{model_id}/promote", json={"to": "staging", "note": "looks good"}, headers=op)
    assert r.status_code == 200 and r.json()["stage"] == "staging"
    assert r.json()["promotions"][-1]["by"] == "operator-1"
    assert client.post(f"/models/{model_id}/promote", json={"to": "staging", "x": 1}, headers=op).status_code == 422
    got = client.get(f"/models/{model_id}/download", headers=_auth(secrets, "viewer"))
    path = runs / "20261201T000000Z-aaaaaa" / "model" / "final.safetensors"
    assert got.status_code == 200 and got.content == path.read_bytes()
    assert got.headers["x-model-sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert client.get("/models/x:final/download", headers=_auth(secrets, "viewer")).status_code == 404


def test_start_refuses_bad_settings_naming_the_field(api, tmp_path: Path) -> None:  # noqa: ANN001
    client, secrets, _ = api
    op = _auth(secrets, "operator")
    partner = tmp_path / "p.toml"
    partner.write_text("")
    r = client.post("/runs", json={"partners": [str(partner), str(tmp_path / "q.toml")],
                                   "config": {"task": str(TASK), "rounds": 2}}, headers=op)
    assert r.status_code == 422 and r.json()["detail"].startswith("partners.1:")
    r = client.post("/runs", json={"partners": [str(partner), str(partner)], "config": {"task": str(TASK),
                                                                                         "rounds": 0}}, headers=op)
    assert r.status_code == 422 and "config.rounds" in r.json()["detail"]
    r = client.post("/runs", json={"partners": [str(partner)] * 2, "config": {"task": str(TASK), "purpose": "x"}},
                    headers=op)
    assert r.status_code == 422 and "purpose" in r.json()["detail"]
    r = client.post("/runs", json={"num_partners": 3, "config": {"task": str(TASK)}}, headers=op)
    assert r.status_code == 422 and "simulation engine" in r.json()["detail"]  # no SuperLink was served
    r = client.post("/runs/20261201T000000Z-aaaaaa/resume", headers=op)
    assert r.status_code == 409 and "completed" in r.json()["detail"]
    r = client.post("/runs/20261201T000000Z-aaaaaa/stop", headers=op)
    assert r.status_code == 409 and "not running" in r.json()["detail"]
    big = {"partners": ["x" * 1000] * 70, "config": {}}
    assert len(json.dumps(big)) > MAX_BODY_BYTES
    assert client.post("/runs", json=big, headers=op).status_code == 413


def test_docs_are_served_from_the_app_itself(api) -> None:  # noqa: ANN001
    client, _, _ = api
    page = client.get("/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    text = page.text
    assert "/runs/{run_id}/rounds" in text and "/models/{model_id}/lineage" in text and "StartRun" in text
    assert "<script" not in text and "http://" not in text and "https://" not in text
    assert client.get("/redoc").status_code == 404
    spec = client.get("/openapi.json").json()
    assert "/login" not in spec["paths"] and "/" not in spec["paths"]


def test_the_dashboard_needs_a_signed_in_token(api) -> None:  # noqa: ANN001
    client, secrets, _ = api
    fresh = TestClient(client.app)
    r = fresh.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert fresh.post("/login", content="token=fco_wrong",
                      headers={"content-type": "application/x-www-form-urlencoded"}).status_code == 401
    r = fresh.post("/login", content=f"token={secrets['viewer']}", follow_redirects=False,
                   headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 303 and "httponly" in r.headers["set-cookie"].lower()
    assert "samesite=strict" in r.headers["set-cookie"].lower()
    page = fresh.get("/")
    assert page.status_code == 200 and "20261201T000000Z-aaaaaa" in page.text
    run = fresh.get("/dashboard/runs/20261201T000000Z-aaaaaa").text
    assert "<svg" in run and 'id="federated-roc_auc"' in run and 'id="epsilon-A"' in run
    assert "Lineage of 20261201T000000Z-aaaaaa:final" in run
    assert "<script" not in run and not re.search(r"(src|href)=['\"]?(https?:)?//|url\((?!#)", run)  # nothing to fetch
    assert "partners" in fresh.get("/dashboard/partners").text
    assert "models" in fresh.get("/dashboard/models").text.lower()
