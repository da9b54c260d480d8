"""As an operator would: start a run through the API, stop and resume it, then look at it in headless Chromium.

The real `fedcrm coordinator serve` on loopback; a real federation (Flower simulation, two
partners) started with ``POST /runs``, stopped with ``POST /runs/{id}/stop`` after its first
round and resumed with ``POST /runs/{id}/resume``; then Debian's Chromium (driven by
playwright, background networking off) signs in and reads the pages: the charts are drawn
with one point per round, and the numbers on the page are the registry's. Every page is
screenshotted into the test's artifacts directory (printed; ``FEDCRM_TEST_ARTIFACTS`` to
keep them elsewhere). The browser may fetch nothing but the app's own pages.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from fedcrm.coordinator.api_tokens import create_operator_token
from tests.api_server import free_port, serve_api
from tests.federation import TELCO_TASK, copy_partners

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--no-first-run", "--disable-extensions"]


def _wait(base: str, headers: dict[str, str], run_id: str, done: Any, timeout: float = 900) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(f"{base}/runs/{run_id}", headers=headers, timeout=30)
        if r.status_code == 200 and done(r.json()):
            return r.json()
        time.sleep(2)
    raise AssertionError(f"run {run_id} did not get there in {timeout:.0f} s: {r.status_code} {r.text[:500]}")


def test_start_stop_resume_through_the_api_then_read_the_dashboard_in_chromium(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    partners = copy_partners(tmp_path / "partners", names=("A", "B"))
    runs = tmp_path / "runs"
    tokens_path = tmp_path / "tokens.json"
    tokens = {role: create_operator_token(tokens_path, role, f"{role}-1") for role in ("operator", "viewer")}
    op = {"Authorization": f"Bearer {tokens['operator']}"}
    view = {"Authorization": f"Bearer {tokens['viewer']}"}
    artifacts = Path(os.environ.get("FEDCRM_TEST_ARTIFACTS", tmp_path / "screenshots"))
    artifacts.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = ["coordinator", "serve", "--tokens", str(tokens_path), "--runs-dir", str(runs), "--port", str(port)]
    with serve_api(args, port=port, log_path=tmp_path / "server.log") as api:
        base = api.base_url
        body = {"partners": [str(p) for p in partners],
                "config": {"task": str(TELCO_TASK), "rounds": 3, "aggregation": "plain", "batch_size": 0,
                           "local_epochs": 1, "seed": 0}}
        started = httpx.post(f"{base}/runs", json=body, headers=op, timeout=60)
        assert started.status_code == 202, started.text
        run_id = started.json()["run_id"]
        assert httpx.post(f"{base}/runs", json=body, headers=view, timeout=30).status_code == 403
        # Stop it once a round is checkpointed (SIGTERM to the PID the API recorded), then resume it.
        _wait(base, view, run_id, lambda r: r["rounds_completed"] >= 1 or r["status"] not in ("starting", "running"))
        stop = httpx.post(f"{base}/runs/{run_id}/stop", headers=op, timeout=30)
        assert stop.status_code == 202, stop.text
        killed = _wait(base, view, run_id, lambda r: r["status"] not in ("starting", "running"), timeout=300)
        assert killed["status"] == "killed", killed
        # The stopped `fedcrm coordinator run` still cleans up (Ray's logs, the registry) after the run is
        # recorded as killed; resume is refused until that process has gone.
        deadline = time.monotonic() + 180
        while True:
            resumed = httpx.post(f"{base}/runs/{run_id}/resume", headers=op, timeout=30)
            if resumed.status_code != 409 or "still running" not in resumed.text or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert resumed.status_code == 202, resumed.text
        run = _wait(base, view, run_id, lambda r: r["status"] in ("completed", "failed", "killed")
                    and r["pid"] == resumed.json()["pid"])
        assert run["status"] == "completed", (run, (runs / ".operator" / f"{run_id}.resume.log").read_text()[-3000:])
        assert run["rounds_completed"] == 3 and len(run["resumed_from"]) == 1
        rounds = httpx.get(f"{base}/runs/{run_id}/rounds", headers=view, timeout=30).json()
        promoted = httpx.post(f"{base}/models/{run_id}:final/promote", json={"to": "staging"}, headers=op, timeout=30)
        assert promoted.status_code == 200, promoted.text
        lineage = httpx.get(f"{base}/models/{run_id}:final/lineage", headers=view, timeout=30).json()
        assert lineage["partners"] == ["A", "B"] and lineage["model"]["round"] == run["final_round"]

        requested: list[str] = []
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.on("request", lambda req: requested.append(req.url))
                page.goto(base + "/")
                assert page.url.endswith("/login")
                page.fill("input[name=token]", tokens["viewer"])
                page.click("button[type=submit]")
                page.wait_for_url(base + "/")
                row = page.locator(f"#runs tr[data-run='{run_id}']")
                assert row.locator(".status").inner_text() == "completed"
                assert row.locator(".rounds").inner_text() == "3/3"
                page.screenshot(path=str(artifacts / "runs.png"), full_page=True)

                page.goto(f"{base}/dashboard/runs/{run_id}")
                chart = page.locator("figure[data-chart=roc_auc] svg")
                assert chart.is_visible() and chart.bounding_box()["width"] > 300
                # One marker per completed round on the federated curve, and a curve per partner.
                assert page.locator("g#federated-roc_auc use").count() == 3
                for name in ("A", "B"):
                    assert page.locator(f"g#partner-{name}-roc_auc use").count() == 3
                assert page.locator("figure[data-chart=participation] svg").is_visible()
                assert page.locator("figure[data-chart=timings] svg").is_visible()
                for r in rounds:
                    cells = page.locator(f"#rounds tr[data-round='{r['round']}']")
                    assert cells.locator(".roc_auc").inner_text() == f"{r['federated']['roc_auc']:.4f}"
                    assert cells.locator(".loss").inner_text() == f"{r['federated_loss']:.4f}"
                    for p in r["partners"]:
                        cell = page.locator(f"#partner-rounds tr[data-round='{r['round']}'][data-partner='{p['partner']}']")
                        assert cell.locator(".roc_auc").inner_text() == f"{p['roc_auc']:.4f}"
                assert f"round {run['final_round']}" in page.locator("#final-round").inner_text()
                assert page.locator("#lineage").is_visible()
                heads = {h["partner"]: h for h in lineage["ledger_heads"]}
                for name, head in heads.items():
                    assert page.locator(f"#heads tr[data-partner='{name}'] .tree-size").inner_text() == str(
                        head["tree_size"])
                page.screenshot(path=str(artifacts / "run.png"), full_page=True)

                page.goto(f"{base}/dashboard/partners")
                registry = {p["partner"]: p for p in httpx.get(f"{base}/partners", headers=view, timeout=30).json()}
                for name in ("A", "B"):
                    row = page.locator(f"#partners tr[data-partner='{name}']")
                    assert row.locator(".rounds-taken").inner_text() == str(registry[name]["rounds_taken_part"])
                    assert row.locator(".connected").inner_text() == "no"
                page.screenshot(path=str(artifacts / "partners.png"), full_page=True)

                page.goto(f"{base}/dashboard/models")
                assert page.locator(f"#models tr[data-model='{run_id}:final'] .stage").inner_text() == "staging"
                page.screenshot(path=str(artifacts / "models.png"), full_page=True)
                page.goto(f"{base}/docs")
                assert "/runs/{run_id}/resume" in page.content()
            finally:
                browser.close()
        assert requested and all(u.startswith(base + "/") for u in requested), sorted(set(requested))
    print(f"dashboard screenshots: {artifacts}")
    if "FEDCRM_TEST_ARTIFACTS" not in os.environ:
        shutil.copytree(artifacts, tmp_path.parent / "dashboard-screenshots", dirs_exist_ok=True)
