"""Helpers for tests that run real federations: fresh partner copies, init, approve the task, run."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

from typer.testing import CliRunner

from fedcrm.cli import app
from fedcrm.coordinator.run_config import RunConfig
from fedcrm.coordinator.runner import RunResult, run_federation
from fedcrm.paths import DATASETS

TELCO = DATASETS / "partners" / "telco"
TELCO_TASK = DATASETS / "tasks" / "telco_churn.yaml"


def init_partner(config: Path) -> None:
    """`fedcrm client init` for one partner, as its data team would run it."""
    result = CliRunner().invoke(app, ["client", "init", "--config", str(config)])
    assert result.exit_code == 0, result.output


def add_dp_required_purpose(config: Path) -> None:
    """Give the partner's vocabulary a purpose ``churn_private`` whose policy requires DP (budget ε = 4 a quarter)."""
    vocab = config.parent / "private-purpose.yaml"
    vocab.write_text("purposes:\n- key: churn_private\n  name: Churn prediction under DP\n"
                     "  legal_basis: legitimate_interest\n  retention_days: 365\n"
                     "  data_categories: [user.behavior.service_subscription, user.financial, user.demographic.age_range,"
                     " user.demographic.household]\n"
                     "  privacy: {differential_privacy: required, epsilon_budget: 4.0, period: quarter}\n")
    config.write_text('vocabulary = ["private-purpose.yaml"]\n' + config.read_text())


def approve_task(config: Path, task: Path = TELCO_TASK) -> None:
    """`fedcrm client approve`: the partner agrees to take part in this exact task schema."""
    result = CliRunner().invoke(app, ["client", "approve", "--config", str(config), "--task", str(task),
                                      "--by", "test data team"])
    assert result.exit_code == 0, result.output


def copy_partners(tmp: Path, split: str = "skewed", names: tuple[str, ...] = ("A", "B", "C"),
                  egress: str | None = None, task: Path | None = TELCO_TASK) -> list[Path]:
    """Fresh copies of bundled partners, initialised and (unless ``task`` is None) approving the task."""
    configs = []
    for name in names:
        target = tmp / name
        shutil.copytree(TELCO / split / name, target)
        config = target / "partner.toml"
        if egress is not None:
            text = config.read_text().replace("[privacy]\n", f'[privacy]\negress_journal = "{egress}"\n')
            config.write_text(text)
        init_partner(config)
        if task is not None:
            approve_task(config, task)
        configs.append(config)
    return configs


def run(tmp: Path, partners: list[Path], **overrides: object) -> RunResult:
    """A federated run on the simulation engine with test-friendly defaults."""
    settings: dict[str, object] = {"task": TELCO_TASK, "rounds": 2, "seed": 0}
    settings.update(overrides)
    return run_federation(RunConfig.model_validate(settings), partners, runs_dir=tmp / "runs", timeout_s=900)


def fresh_partner(partner_dir: Path, tmp_path: Path) -> Path:
    """A fresh copy of an initialised partner directory (its own ledger and egress journal); its config path.

    Also forgets the round views this test process cached, as a new partner process would.
    """
    from fedcrm.client.partner_session import clear_round_views

    shutil.copytree(partner_dir, tmp_path / partner_dir.name)
    clear_round_views()
    return tmp_path / partner_dir.name / "partner.toml"


def spend_earlier(config_path: Path, epsilon: float, purpose: str = "churn_prediction") -> int:
    """Record an earlier run's DP-SGD spend of ``epsilon`` in the partner's ledger; the ledger's size after it."""
    from datetime import UTC, datetime

    from fedcrm.client.config import load_partner_config
    from fedcrm.consent import budget
    from fedcrm.consent.ledger import Ledger

    config = load_partner_config(config_path)
    with Ledger.open(config.ledger_url, signing_key_path=config.ledger_key_path) as led:
        budget.record_spend(led, purpose=purpose, run_id="earlier", server_round=1, epsilon=epsilon,
                            delta=1e-5, mechanism="dp-sgd", accountant_state={}, at=datetime.now(UTC))
        return led.tree_size()


def forbid_customer_data(monkeypatch: object) -> None:
    """Make the partner session fail the test if it gates or loads its customer table."""

    def no_data(*_a: object, **_k: object) -> None:
        raise AssertionError("customer data was read")

    monkeypatch.setattr("fedcrm.client.partner_session.gate", no_data)  # type: ignore[attr-defined]
    for loader in ("open_customers_mapped", "load_customers_lean"):  # whichever the session reads the table with
        monkeypatch.setattr(f"fedcrm.client.partner_session.{loader}", no_data, raising=False)  # type: ignore[attr-defined]


def sigint_as_default() -> None:
    """``preexec_fn`` for a process a test sends SIGINT (Ctrl-C): a suite started as a background job by a
    non-interactive shell inherits SIGINT ignored (POSIX), and Python then installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
