"""Dropout tolerance on Flower's simulation engine with the real Telco partner sizes.

Partner B is made to fail its training in round 2 (fault injection, environment only):
with ``min_partners = 2`` the run completes, round 2 records B missing with its reason
and B is back in round 3; with the default (every partner) the run fails naming B.
Under SecAgg+ the fit order arrives inside the ``collect_masked_vectors`` stage, so the
same spec ``B:fit:2:raise`` must fire there (it used to be a silent no-op).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedcrm.client.faults import ENV_VAR
from tests.federation import copy_partners, run

pytestmark = pytest.mark.slow

FAST = {"rounds": 3, "local_epochs": 1, "architecture": "logistic"}


@pytest.fixture(scope="module")
def partners(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return copy_partners(tmp_path_factory.mktemp("partners"))


@pytest.mark.parametrize("aggregation", ["secagg", "plain"])
def test_min_partners_two_completes_without_b_in_round_2_and_b_rejoins(
    partners: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, aggregation: str
) -> None:
    monkeypatch.setenv(ENV_VAR, "B:fit:2:raise")
    result = run(tmp_path, partners, aggregation=aggregation, min_partners=2, **FAST)
    assert result.succeeded, result.error
    r1, r2, r3 = result.rounds
    assert sorted(r1["fit"]) == ["A", "B", "C"] and "missing" not in r1
    assert sorted(r2["fit"]) == ["A", "C"], "round 2 must aggregate A and C only"
    stage = "collect_masked_vectors" if aggregation == "secagg" else "fit"
    assert list(r2["missing"]) == [stage]
    assert "partner B: injected failure at stage 'fit' of round 2" in r2["missing"][stage]["B"]
    assert sorted(r2["evaluate"]) == ["A", "B", "C"], "B failed training only; it still evaluates"
    assert sorted(r3["fit"]) == ["A", "B", "C"] and "missing" not in r3, "B rejoins in round 3"
    if aggregation == "secagg":
        assert sorted(r2["secagg_stages"]["unmask"]) == ["A", "C"]
        assert all(sorted(p) == ["A", "B", "C"] for p in r3["secagg_stages"].values())
        params = next(json.loads(line) for line in (result.run_dir / "events.jsonl").read_text().splitlines()
                      if '"secagg_parameters"' in line)
        assert (params["num_shares"], params["reconstruction_threshold"]) == (3, 2)
    status = json.loads((result.run_dir / "status.json").read_text())
    assert status["outcome"] == "completed" and status["rounds_completed"] == 3
    assert (result.run_dir / "model" / "final.safetensors").exists()


@pytest.mark.parametrize("aggregation", ["secagg", "plain"])
def test_by_default_a_missing_partner_fails_the_run_naming_it(
    partners: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, aggregation: str
) -> None:
    monkeypatch.setenv(ENV_VAR, "B:fit:2:raise")
    result = run(tmp_path, partners, aggregation=aggregation, **FAST)
    assert not result.succeeded
    stage = "collect_masked_vectors" if aggregation == "secagg" else "fit"
    assert f"round 2 failed at stage '{stage}': partner(s) B" in (result.error or ""), result.error
    assert "injected failure" in (result.error or "")
    status = json.loads((result.run_dir / "status.json").read_text())
    assert status["outcome"] == "failed" and status["after_round"] == 1 and status["rounds_completed"] == 1
    assert not (result.run_dir / "model" / "final.safetensors").exists()
    assert (result.run_dir / "checkpoint" / "round-1.json").exists()
