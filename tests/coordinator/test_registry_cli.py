"""`fedcrm coordinator registry rebuild | models | promote | lineage | status | token` on recorded run directories."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from fedcrm.cli import app
from fedcrm.coordinator.registry import read_events
from tests.coordinator.registry_runs import write_run


def _cli(*args: str) -> str:
    result = CliRunner().invoke(app, ["coordinator", *args], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    return result.output


def test_rebuild_models_promote_and_lineage_from_the_command_line(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_run(runs, "r1", rounds=3, seed=4, dp=True)
    reg = ["--runs-dir", str(runs), "--registry", f"sqlite:///{tmp_path / 'reg.db'}"]
    assert "indexed 1 run(s)" in _cli("registry", "rebuild", *reg)
    models = json.loads(_cli("models", *reg, "--json"))
    assert [m["model_id"] for m in models] == ["r1:final"] and models[0]["stage"] == "candidate"
    assert "now staging" in _cli("promote", "r1:final", "--to", "staging", "--by", "alice", *reg)
    failed = CliRunner().invoke(app, ["coordinator", "promote", "r1:round-1", "--to", "staging", *reg])
    assert failed.exit_code == 1 and "only a run's final model" in failed.output
    lineage = json.loads(_cli("lineage", "r1:final", *reg, "--json"))
    assert lineage["partners"] == ["A", "B", "C"] and lineage["model"]["stage"] == "staging"
    text = _cli("lineage", "r1:final", *reg)
    assert "Consent-ledger heads" in text and "DP: partner A" in text and "local hold-out" in text


def test_status_prints_a_runs_progress_from_its_directory(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "runs", "r2", rounds=2, seed=9, dropout=(2, "B"))
    out = _cli("status", "r2", "--runs-dir", str(tmp_path / "runs"))
    last = [e for e in read_events(run_dir) if e["event"] == "evaluate"][-1]
    assert "run r2: completed — 2/2 rounds completed" in out
    assert f"validation loss {last['loss']:.4f}" in out
    assert "round 2 evaluate: B dropped out" in out and "final model: round" in out
    (run_dir / "status.json").unlink()  # as while the run is still going
    assert "running — 2/2" in _cli("status", str(run_dir))


def test_tokens_are_shown_once_and_stored_hashed(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    secret = _cli("token", "create", "--tokens", str(tokens), "--role", "viewer", "--name", "ops").strip()
    assert secret.startswith("fco_") and secret not in tokens.read_text()
    assert oct(tokens.stat().st_mode & 0o777) == "0o600"
    assert _cli("token", "list", "--tokens", str(tokens)).split()[:2] == ["ops", "viewer"]
    bad = CliRunner().invoke(app, ["coordinator", "token", "create", "--tokens", str(tokens), "--role", "admin",
                                   "--name", "x"])
    assert bad.exit_code == 1 and "unknown role" in bad.output
    _cli("token", "revoke", "--tokens", str(tokens), "--name", "ops")
    assert "ops" not in _cli("token", "list", "--tokens", str(tokens))
