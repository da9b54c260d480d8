"""A partner whose ε budget runs out mid-run stops; the run fails or continues per ``min_partners``.

Real Flower simulation, SecAgg+ on, record-level DP-SGD. Partner C's remaining budget covers
the run's planned ε = 3 when it starts (the first-round check passes), but as soon as C has
recorded its round-1 spend, another run of the same purpose spends almost all that is left
(two runs admitted concurrently, as a real consortium's could be). In round 2 C predicts the ε
the round would add, finds that it no longer fits, records the refusal and trains nothing.
The run that continues also asks for a noised statistics round (``[run.dp] statistics``), whose
spend every partner records before round 1 and which DP-SGD's first-round check already counts.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fedcrm.client.config import load_partner_config
from fedcrm.client.dp_sums import STATISTICS
from fedcrm.consent import budget
from fedcrm.consent.ledger import Ledger
from tests.client.test_client_dp_sums import bounded_task_file
from tests.federation import TELCO_TASK, copy_partners, run

pytestmark = pytest.mark.slow

FAST = {"architecture": "logistic", "local_epochs": 1, "batch_size": 256, "rounds": 2}
DP = {"mode": "record", "target_epsilon": 3.0, "max_grad_norm": 1.0}
PURPOSE = "churn_prediction"  # budget 10 per year (consent/data/purposes.yaml)


def _record(config: Path, run_id: str, epsilon: float) -> None:
    cfg = load_partner_config(config)
    with Ledger.open(cfg.ledger_url, signing_key_path=cfg.ledger_key_path, origin=f"fedcrm/{cfg.name}") as ledger:
        budget.record_spend(ledger, purpose=PURPOSE, run_id=run_id, server_round=1, epsilon=epsilon, delta=1e-5,
                            mechanism="dp-sgd", accountant_state={}, at=datetime.now(UTC))


class ConcurrentRun(threading.Thread):
    """Spends all but ε = 0.01 of C's budget once C's ledger holds this run's round-1 spend."""

    def __init__(self, config: Path) -> None:
        super().__init__(daemon=True)
        self.config = config
        self.path = load_partner_config(config).ledger_url.removeprefix("sqlite:///")
        self.stop = threading.Event()
        self.spent: float | None = None

    def _dp_sgd_spends(self) -> int:
        with sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10) as conn:
            return conn.execute("SELECT count(*) FROM log_entries WHERE kind = 'dp_spend' AND public_json LIKE "
                                "'%\"mechanism\":\"dp-sgd\"%'").fetchone()[0]

    def run(self) -> None:
        while not self.stop.is_set():
            if self._dp_sgd_spends() >= 2:  # the earlier run's, then this run's round 1
                cfg = load_partner_config(self.config)
                with Ledger.open(cfg.ledger_url) as ledger:
                    left = budget.remaining_epsilon(ledger, PURPOSE, datetime.now(UTC))
                assert left is not None
                self.spent = left - 0.01
                _record(self.config, "concurrent-run", self.spent)
                return
            time.sleep(0.02)


def _partners(tmp: Path, task: Path = TELCO_TASK) -> tuple[list[Path], ConcurrentRun]:
    partners = copy_partners(tmp, task=task)
    c = next(p for p in partners if load_partner_config(p).name == "C")
    _record(c, "earlier", 6.0)  # 4 left: the run's planned 3 (+ 0.5 for noised statistics) fits when it starts
    return partners, ConcurrentRun(c)


def _c_ledger(partners: list[Path], run_id: str) -> tuple[list[int], list]:
    c = next(p for p in partners if load_partner_config(p).name == "C")
    with Ledger.open(load_partner_config(c).ledger_url) as ledger:
        assert ledger.verify().ok
        rounds = [e.server_round for _, e in budget.spends(ledger) if e.run_id == run_id]
        refusals = [s.event for s in ledger.events_of_kind("order_refusal") if s.event.job_id == run_id]
    return rounds, refusals


def _check_c_stopped(partners: list[Path], run_id: str) -> None:
    rounds, refusals = _c_ledger(partners, run_id)
    rounds = [r for r in rounds if r != 0]  # round 0: the statistics round's spend, if noised
    assert rounds == [1], "C spent round 1 only"
    assert [(r.reason, r.stage, r.model_version) for r in refusals] == [("privacy_budget", "fit", f"{run_id}:2")]
    assert f"purpose '{PURPOSE}' exceeds the remaining budget" in refusals[0].detail


def test_a_partner_out_of_budget_mid_run_fails_the_run_naming_it_and_the_purpose(tmp_path: Path) -> None:
    partners, spender = _partners(tmp_path)
    spender.start()
    try:
        result = run(tmp_path, partners, **FAST, dp=DP)
    finally:
        spender.stop.set()
        spender.join()
    assert spender.spent is not None, "the concurrent spend never happened"
    assert not result.succeeded
    error = result.error or ""
    assert "round 2 failed" in error and "partner(s) C" in error, error
    assert f"purpose '{PURPOSE}'" in error and "remaining budget" in error, error
    _check_c_stopped(partners, result.run_id)


def test_with_min_partners_the_run_continues_without_the_partner_out_of_budget(tmp_path: Path) -> None:
    task = bounded_task_file(tmp_path)
    partners, spender = _partners(tmp_path, task)
    spender.start()
    try:
        result = run(tmp_path, partners, **FAST, task=task, dp={**DP, "statistics": True}, min_partners=2)
    finally:
        spender.stop.set()
        spender.join()
    assert spender.spent is not None, "the concurrent spend never happened"
    assert result.succeeded, result.error
    r1, r2 = result.rounds
    assert sorted(r1["fit"]) == ["A", "B", "C"]
    assert sorted(r2["fit"]) == ["A", "B"], "round 2 aggregates A and B only"
    (stage,) = r2["missing"]
    assert f"purpose '{PURPOSE}' exceeds the remaining budget" in r2["missing"][stage]["C"]
    _check_c_stopped(partners, result.run_id)
    for config in partners:  # the noised statistics round: one spend per partner, before round 1
        with Ledger.open(load_partner_config(config).ledger_url) as ledger:
            mine = [e for _, e in budget.spends(ledger) if e.run_id == result.run_id]
        assert mine[0].mechanism == STATISTICS and mine[0].server_round == 0
        assert [e.mechanism for e in mine[1:]] == ["dp-sgd"] * (len(mine) - 1)
