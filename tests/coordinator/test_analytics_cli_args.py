"""`fedcrm coordinator analytics` refuses an engine choice it cannot run, before anything starts."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from fedcrm.cli import app
from fedcrm.paths import DATASETS

TASK = str(DATASETS / "tasks" / "telco_segments.yaml")


def _run(tmp_path: Path, *args: str) -> str:
    result = CliRunner().invoke(app, ["coordinator", "analytics", "r", "--task", TASK,
                                      "--runs-dir", str(tmp_path / "runs"), *args])
    assert result.exit_code != 0
    assert not (tmp_path / "runs").exists(), "nothing may be planned for a refused command"
    return " ".join(result.output.split())


def test_superlink_needs_a_partner_count_and_no_partner_configs(tmp_path: Path) -> None:
    assert "own configs" in _run(tmp_path, "--superlink", "127.0.0.1:9", "--insecure")
    assert "own configs" in _run(tmp_path, "--superlink", "127.0.0.1:9", "--insecure", "--partners", "2",
                                  "--partner", "A/partner.toml")


def test_superlink_needs_tls_or_an_explicit_insecure(tmp_path: Path) -> None:
    assert "--insecure" in _run(tmp_path, "--superlink", "127.0.0.1:9", "--partners", "2")


def test_tls_options_without_superlink_are_refused(tmp_path: Path) -> None:
    assert "only apply with --superlink" in _run(tmp_path, "--insecure", "--partner", "a", "--partner", "b")
