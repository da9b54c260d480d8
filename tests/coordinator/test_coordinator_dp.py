"""Differential privacy through real Flower federations (simulation engine, SecAgg+ on)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedcrm.client.config import load_partner_config
from fedcrm.consent import budget
from fedcrm.consent.ledger import Ledger
from fedcrm.coordinator.registry import read_events
from tests.client.test_client_dp import independent_epsilon
from tests.federation import copy_partners, run

FAST = {"architecture": "logistic", "local_epochs": 1, "batch_size": 256, "rounds": 2}


@pytest.mark.slow
def test_record_level_dp_with_secagg_records_each_partners_spend(tmp_path: Path) -> None:
    partners = copy_partners(tmp_path)
    result = run(tmp_path, partners, **FAST, dp={"mode": "record", "target_epsilon": 3.0, "max_grad_norm": 1.0})
    assert result.succeeded, result.error
    fits = [e for e in read_events(result.run_dir) if e["event"] == "fit"]
    assert len(fits) == 2
    stages = [e for e in read_events(result.run_dir) if e["event"] == "secagg_parameters"]
    assert stages, "SecAgg+ did not run"
    for config in partners:
        name = load_partner_config(config).name
        with Ledger.open(load_partner_config(config).ledger_url) as ledger:
            assert ledger.verify().ok
            mine = [e for _, e in budget.spends(ledger) if e.run_id == result.run_id]
        assert [e.server_round for e in mine] == [1, 2]
        assert mine[0].epsilon < mine[1].epsilon <= 3.0 + 1e-6
        assert mine[1].epsilon == pytest.approx(independent_epsilon(mine[1].accountant_state["history"], mine[1].delta),
                                                rel=0.02)
        reported = fits[-1]["partners"][name]["dp"]  # what the coordinator (and the registry) saw
        assert reported["epsilon"] == pytest.approx(mine[1].epsilon) and reported["mode"] == "record"


@pytest.mark.slow
def test_client_level_dp_option_runs_with_secagg(tmp_path: Path) -> None:
    partners = copy_partners(tmp_path)
    result = run(tmp_path, partners, **{**FAST, "rounds": 1},
                 dp={"mode": "client", "noise_multiplier": 0.5, "clipping_norm": 0.5})
    assert result.succeeded, result.error
    for config in partners:  # client-level noise is the coordinator's: no partner-side spend is recorded
        with Ledger.open(load_partner_config(config).ledger_url) as ledger:
            assert budget.spends(ledger) == []
