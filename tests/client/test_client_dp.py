"""Record-level DP-SGD at the partner: noise really applied, ε cross-checked, accountant kept, budgets enforced."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict
from sqlalchemy import create_engine, text

from fedcrm.client.config import load_partner_config
from fedcrm.client.flower_app import PartnerClient
from fedcrm.client.partner_session import clear_round_views
from fedcrm.consent import budget
from fedcrm.consent.ledger import Ledger
from fedcrm.errors import LedgerIntegrityError, OrderRefused, PrivacyBudgetExceeded
from fedcrm.evaluation import load_rows, local_scaling
from fedcrm.models.dp_train import DpTrainConfig, train_local_dp
from fedcrm.models.nets import build_model
from fedcrm.models.params import get_arrays
from fedcrm.models.train import train_local
from fedcrm.models.train_config import TrainConfig
from fedcrm.protocol import FitMetrics, FitOrder, load_task_schema
from tests.federation import TELCO_TASK, add_dp_required_purpose, approve_task, copy_partners, forbid_customer_data, fresh_partner, spend_earlier

TASK = load_task_schema(TELCO_TASK)


def independent_epsilon(history: list[list[float]], delta: float) -> float:
    """ε of Poisson-subsampled Gaussian steps by Google's dp-accounting (not Opacus)."""
    accountant = dp_accounting.rdp.RdpAccountant()
    for sigma, q, steps in history:
        event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
        accountant.compose(dp_accounting.SelfComposedDpEvent(event, int(steps)))
    return float(accountant.get_epsilon(delta))


@pytest.fixture(scope="module")
def partner_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    (config,) = copy_partners(tmp_path_factory.mktemp("dp"), names=("B",))
    return config.parent


@pytest.fixture
def partner(partner_dir: Path, tmp_path: Path) -> Path:
    """A fresh copy of the initialised partner (its own ledger) per test."""
    return fresh_partner(partner_dir, tmp_path)


@pytest.fixture(scope="module")
def scaling(partner_dir: Path) -> dict[str, tuple[float, float]]:
    return local_scaling(load_rows(partner_dir / "partner.toml"), TASK)


def _client(config: Path) -> PartnerClient:
    return PartnerClient(Context(run_id=1, node_id=1, node_config={"partner-config": str(config)}, state=RecordDict(),
                                 run_config={}))


def _order(run_id: str, server_round: int, scaling, **dp: object) -> dict:  # noqa: ANN001
    return FitOrder(run_id=run_id, server_round=server_round, task_schema=TASK, task_schema_sha256=TASK.sha256(),
                    architecture="logistic", scaling=scaling, local_epochs=1, learning_rate=0.05, batch_size=128,
                    optimizer="sgd", seed=7, **dp).to_config()


def _dp(eps: float = 3.0, rounds: int = 3) -> dict[str, object]:
    return {"dp_mode": "record", "dp_target_epsilon": eps, "dp_max_grad_norm": 1.0, "dp_planned_rounds": rounds}


def _weights() -> list[np.ndarray]:
    return get_arrays(build_model("logistic", TASK.width, seed=0))


def _spends(config: Path) -> list:
    with Ledger.open(load_partner_config(config).ledger_url) as ledger:
        return [e for _, e in budget.spends(ledger)]


@pytest.mark.parametrize("architecture", ["logistic", "mlp"])  # every model family the federation trains
def test_dp_sgd_clips_each_record_and_adds_noise(architecture: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6)).astype(np.float32) * 5
    y = (x[:, 0] > 0).astype(np.float32)
    cfg = TrainConfig(epochs=1, learning_rate=1.0, batch_size=0, optimizer="sgd", seed=3)  # one full-batch step

    def update(noise: float | None, seed: int = 3) -> float:
        model = build_model(architecture, 6, seed=0)  # type: ignore[arg-type]
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        run = TrainConfig(**{**cfg.__dict__, "seed": seed})
        if noise is None:
            train_local(model, x, y, run)
        else:
            train_local_dp(model, x, y, run, DpTrainConfig(noise_multiplier=noise, max_grad_norm=0.01, delta=1e-5))
        return float(torch.linalg.vector_norm(torch.cat([p.detach().flatten() for p in model.parameters()]) - before))

    plain, clipped = update(None), update(0.0)
    # q = 1: every record is in the one batch; the mean of gradients clipped to 0.01 moves at most lr × 0.01.
    assert plain > 0.1 and clipped <= 0.01 + 1e-6
    noisy_a, noisy_b, noisy_other_seed = update(1.0), update(1.0), update(1.0, seed=4)
    assert noisy_a == pytest.approx(noisy_b)  # seeded: reproducible
    assert noisy_a != pytest.approx(clipped) and noisy_a != pytest.approx(noisy_other_seed)


def test_update_with_dp_differs_and_epsilon_matches_an_independent_accountant(partner: Path, scaling) -> None:  # noqa: ANN001
    client = _client(partner)
    plain, n_plain, _ = client.fit(_weights(), _order("plain", 1, scaling))
    private, n, metrics = client.fit(_weights(), _order("private", 1, scaling, **_dp()))
    assert n == n_plain and any(not np.allclose(a, b) for a, b in zip(plain, private, strict=True))
    dp = FitMetrics.from_config(metrics).dp
    assert dp is not None and dp.mode == "record" and 0 < dp.delta < 1 / n
    (spend,) = _spends(partner)
    history = spend.accountant_state["history"]
    assert history == [[dp.noise_multiplier, dp.sample_rate, dp.steps]]
    assert dp.epsilon == pytest.approx(independent_epsilon(history, dp.delta), rel=0.02)
    assert spend.epsilon == dp.epsilon and spend.epsilon_spent == dp.epsilon and spend.purpose == "churn_prediction"


def test_accountant_survives_a_restart_and_reaches_the_target_after_the_planned_rounds(partner: Path, scaling) -> None:  # noqa: ANN001
    epsilons = []
    for server_round in (1, 2, 3):
        clear_round_views()  # a new process each round: only the ledger remembers
        _, _, metrics = _client(partner).fit(_weights(), _order("run", server_round, scaling, **_dp(3.0, 3)))
        epsilons.append(FitMetrics.from_config(metrics).dp)
    assert epsilons[0].epsilon < epsilons[1].epsilon < epsilons[2].epsilon <= 3.0 + 1e-6
    assert epsilons[2].epsilon > 2.8  # the noise was calibrated to the whole run, not to one round
    assert epsilons[2].steps == 3 * epsilons[0].steps
    spends = _spends(partner)
    assert [s.server_round for s in spends] == [1, 2, 3]
    assert sum(s.epsilon_spent for s in spends) == pytest.approx(spends[-1].epsilon)
    assert spends[-1].epsilon == pytest.approx(independent_epsilon(spends[-1].accountant_state["history"],
                                                                   spends[-1].delta), rel=0.02)
    # Tamper-evident: a spend edited to look cheaper breaks verify, and the partner refuses to train on it.
    config = load_partner_config(partner)
    engine = create_engine(config.ledger_url)
    with engine.begin() as conn:
        idx, public = conn.execute(text("SELECT idx, public_json FROM log_entries WHERE kind = 'dp_spend' "
                                        "ORDER BY idx LIMIT 1")).one()
        conn.execute(text("UPDATE log_entries SET public_json = :p WHERE idx = :i"),
                     {"p": public.replace('"epsilon_spent":', '"epsilon_spent":0.0,"x":', 1), "i": idx})
    engine.dispose()
    with Ledger.open(config.ledger_url) as ledger:
        assert not ledger.verify().ok
    clear_round_views()
    with pytest.raises(LedgerIntegrityError):
        _client(partner).fit(_weights(), _order("run", 4, scaling, **_dp(3.0, 4)))


def test_an_over_budget_run_is_refused_before_any_data_is_read(partner: Path, scaling, monkeypatch) -> None:  # noqa: ANN001
    size = spend_earlier(partner, 8.5)
    forbid_customer_data(monkeypatch)
    with pytest.raises(PrivacyBudgetExceeded, match=r"partner B.*ε = 3 .*churn_prediction.*remaining budget ε = 1\.5"):
        _client(partner).fit(_weights(), _order("greedy", 1, scaling, **_dp(3.0)))
    with Ledger.open(load_partner_config(partner).ledger_url) as led:
        new = [s.event for s in led.events(size)]
    assert [e.kind for e in new] == ["order_refusal"] and new[0].reason == "privacy_budget"


def test_a_purpose_that_requires_dp_refuses_an_order_without_it(partner: Path, scaling, tmp_path: Path) -> None:  # noqa: ANN001
    add_dp_required_purpose(partner)
    task_file = tmp_path / "task.yaml"
    task_file.write_text(TELCO_TASK.read_text().replace("purpose: churn_prediction", "purpose: churn_private"))
    task = load_task_schema(task_file)
    assert task.purpose == "churn_private"
    approve_task(partner, task_file)
    order = FitOrder.from_config(_order("x", 1, scaling))
    plain = order.model_copy(update={"task_schema": task, "task_schema_sha256": task.sha256()})
    with pytest.raises(OrderRefused, match="requires record-level differential privacy"):
        _client(partner).fit(_weights(), plain.to_config())
    client_dp = plain.model_copy(update={"dp_mode": "client"})
    with pytest.raises(OrderRefused, match="client-level DP"):
        _client(partner).fit(_weights(), client_dp.to_config())
    too_much = plain.model_copy(update={"dp_mode": "record", "dp_target_epsilon": 5.0, "dp_planned_rounds": 2,
                                        "run_id": "y"})
    with pytest.raises(PrivacyBudgetExceeded, match="remaining budget ε = 4"):
        _client(partner).fit(_weights(), too_much.to_config())
    with Ledger.open(load_partner_config(partner).ledger_url) as led:
        reasons = [s.event.reason for s in led.events_of_kind("order_refusal")]
    assert reasons == ["privacy_policy", "privacy_policy", "privacy_budget"]
    ok = too_much.model_copy(update={"dp_target_epsilon": 2.0, "run_id": "z"})
    _, _, metrics = _client(partner).fit(_weights(), ok.to_config())
    assert FitMetrics.from_config(metrics).dp.epsilon <= 2.0


def test_preflight_refuses_a_planned_spend_over_the_remaining_budget(partner: Path) -> None:
    from fedcrm.client.check import check_partner
    from fedcrm.coordinator.check import check_partners, preflight_message
    from fedcrm.coordinator.run_config import DpConfig

    with Ledger.open(load_partner_config(partner).ledger_url, signing_key_path=partner.parent / "ledger.key") as led:
        budget.record_spend(led, purpose="churn_prediction", run_id="earlier", server_round=1, epsilon=8.5,
                            delta=1e-5, mechanism="dp-sgd", accountant_state={}, at=datetime.now(UTC))
    fits = check_partner(partner, TELCO_TASK, dp_mode="record", planned_epsilon=1.0)
    assert not [f for f in fits.errors if f.kind == "privacy"]
    assert any(f.kind == "privacy" and "1.5 of 10 left" in f.message for f in fits.findings)
    (result,) = check_partners(TELCO_TASK, [(None, partner)], dp=DpConfig(mode="record", target_epsilon=3.0))
    message = preflight_message([result])
    assert not result.ok and "partner B: the run's planned spend of ε = 3" in message
    assert "'churn_prediction' exceeds the remaining budget ε = 1.5" in message
