"""Vocabulary by configuration: an insurance export's demographic columns carry their true category."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fedcrm.client.check import check_partner
from fedcrm.client.cli import app as client_app
from fedcrm.client.config import load_partner_config
from fedcrm.client.ingest import load_customers
from fedcrm.client.pseudonymise import load_key, pseudonymise
from fedcrm.client.vocabulary import vocabulary_for_gate
from fedcrm.consent.events import ConsentEvent, UsageEvent, VocabularyEvent
from fedcrm.consent.gate import UsageContext, gate
from fedcrm.consent.ledger import Ledger

TASK = """
schema_version: 1
name: insurance_renewal
version: 1.0.0
purpose: purchase_propensity
label: {name: renewed, positive_value: 'yes'}
features:
- {name: age_band, type: categorical, vocabulary: ['18-29', '30-49', '50-64', '65+']}
- {name: household_size, type: numeric}
- {name: annual_premium, type: numeric}
- {name: policies_bought, type: numeric}
"""

# Shipped by the consortium beside the task: the household-size category, and the partners'
# decision that purchase propensity may use coarse demographics.
VOCABULARY = """
data_categories:
- key: user.demographic.household.size
  name: Household size
  extension: true
purpose_categories:
  purchase_propensity: [user.demographic.household, user.demographic.age_range, user.financial]
"""

CONFIG = """
name = "insurer"
{vocabulary}
[source]
path = "policies.csv"

[columns.policy_holder]
role = "customer_id"
category = "user.unique_id"

[columns.AgeBand]
role = "feature"
feature = "age_band"
type = "categorical"
category = "user.demographic.age_range"

[columns.HouseholdSize]
role = "feature"
feature = "household_size"
type = "integer"
min = 1
max = 20
category = "user.demographic.household.size"

[columns.Premium]
role = "feature"
feature = "annual_premium"
type = "numeric"
min = 0
category = "user.financial.billing"

[columns.PoliciesBought]
role = "feature"
feature = "policies_bought"
type = "integer"
category = "user.behavior.purchase_history"

[columns.Renewed]
role = "label"
positive = ["yes"]
negative = ["no"]
category = "user.behavior.purchase_history"
"""


@pytest.fixture()
def insurer(tmp_path: Path) -> tuple[Path, Path]:
    """An insurance-style export, its partner config, and a task folder shipping a vocabulary file."""
    rng = np.random.default_rng(0)
    n = 300
    pd.DataFrame({
        "policy_holder": [f"P{i:05d}" for i in range(n)],
        "AgeBand": rng.choice(["18-29", "30-49", "50-64", "65+"], n),
        "HouseholdSize": rng.integers(1, 7, n),
        "Premium": rng.uniform(200, 2000, n).round(2),
        "PoliciesBought": rng.integers(0, 4, n),
        "Renewed": rng.choice(["yes", "no"], n),
    }).to_csv(tmp_path / "policies.csv", index=False)
    (tmp_path / "task").mkdir()
    (tmp_path / "task" / "insurance_renewal.yaml").write_text(TASK)
    (tmp_path / "task" / "vocabulary.yaml").write_text(VOCABULARY)
    return tmp_path / "partner.toml", tmp_path / "task" / "insurance_renewal.yaml"


def _write_config(config: Path, *, with_vocabulary: bool) -> None:
    line = 'vocabulary = ["task/vocabulary.yaml"]' if with_vocabulary else ""
    config.write_text(CONFIG.format(vocabulary=line))
    assert CliRunner().invoke(client_app, ["init", "--config", str(config)]).exit_code == 0
    if with_vocabulary:  # the partner agrees to the task (its policy allows it only with the vocabulary file)
        task = config.parent / "task" / "insurance_renewal.yaml"
        result = CliRunner().invoke(client_app, ["approve", "--config", str(config), "--task", str(task), "--by", "t"])
        assert result.exit_code == 0, result.output


def test_without_the_vocabulary_file_every_demographic_column_is_refused(insurer) -> None:  # noqa: ANN001
    config, task = insurer
    _write_config(config, with_vocabulary=False)
    report = check_partner(config, task)
    assert {f.kind for f in report.errors} == {"category", "approval", "consent"}
    by_column = {f.column: f.message for f in report.errors if f.kind == "category"}
    assert set(by_column) == {"AgeBand", "HouseholdSize", "Premium"}
    assert "unknown data category 'user.demographic.household.size'" in by_column["HouseholdSize"]


def _opt_in_everyone(cfg) -> int:  # noqa: ANN001
    """Record every customer's opt-in to purchase propensity for the task's categories."""
    key = load_key(cfg.key_path)
    ids = pd.read_csv(cfg.resolve(cfg.source.path), dtype=str)["policy_holder"]
    now = datetime.now(UTC)
    events = [
        ConsentEvent(receipt_id=f"r-{i}-{cat}", subject=pseudonymise(raw, key), purpose="purchase_propensity",
                     category=cat, action="grant", legal_basis="consent", effective_at=now, recorded_at=now,
                     source="test", notice_version="v1")
        for i, raw in enumerate(ids)
        for cat in ("user.demographic", "user.financial", "user.behavior.purchase_history")
    ]
    with Ledger.open(cfg.ledger_url, signing_key_path=cfg.ledger_key_path, origin="fedcrm/insurer") as ledger:
        ledger.append(events)
    return len(ids)


def test_with_the_vocabulary_file_the_household_column_keeps_its_true_category(insurer) -> None:  # noqa: ANN001
    config, task = insurer
    _write_config(config, with_vocabulary=True)
    cfg = load_partner_config(config)
    before = check_partner(config, task)
    assert [f.kind for f in before.errors] == ["consent"]  # opt-in purpose, nobody has opted in yet
    customers = _opt_in_everyone(cfg)
    report = check_partner(config, task)
    assert report.ok, report.summary()
    assert report.customers_kept == customers
    ledger = Ledger.open(cfg.ledger_url, signing_key_path=cfg.ledger_key_path, origin="fedcrm/insurer")
    try:
        vocab = vocabulary_for_gate(cfg, ledger)
        assert vocab.purpose_covers("purchase_propensity", "user.demographic.household.size") == (
            "user.demographic.household")
        categories = {f: cfg.columns[c].category for f, c in cfg.feature_columns().items()}
        view = gate(load_customers(cfg), categories, "purchase_propensity", datetime.now(UTC),
                    ["age_band", "household_size"], ledger=ledger,
                    use=UsageContext(job_id="t", partner="insurer", model_version="", stage="analytics"),
                    vocabulary=vocab)
        assert view.columns == ("age_band", "household_size")
        recorded = [e.event for e in ledger.events_of_kind("vocabulary")]
        uses = [e.event for e in ledger.events() if isinstance(e.event, UsageEvent)]
    finally:
        ledger.close()
    (event,) = recorded
    assert isinstance(event, VocabularyEvent)
    assert event.added_categories == ("user.demographic.household.size",)
    assert set(event.widened_purposes["purchase_propensity"]) == {
        "user.demographic.household", "user.demographic.age_range", "user.financial"}
    assert event.sources[0].endswith(tuple("0123456789abcdef")) and "vocabulary.yaml sha256:" in event.sources[0]
    assert len(uses) == 1


def test_the_ledger_records_the_vocabulary_only_when_it_changes(insurer) -> None:  # noqa: ANN001
    config, _ = insurer
    _write_config(config, with_vocabulary=True)
    cfg = load_partner_config(config)
    with Ledger.open(cfg.ledger_url, signing_key_path=cfg.ledger_key_path, origin="fedcrm/insurer") as ledger:
        vocabulary_for_gate(cfg, ledger)
        vocabulary_for_gate(cfg, ledger)
        assert len(ledger.events_of_kind("vocabulary")) == 1
        vocab_file = config.parent / "task" / "vocabulary.yaml"
        vocab_file.write_text(VOCABULARY.replace(", user.financial]", "]"))
        vocabulary_for_gate(cfg, ledger)
        events = [e.event for e in ledger.events_of_kind("vocabulary")]
        assert len(events) == 2 and events[0].vocabulary_sha256 != events[1].vocabulary_sha256
        assert "user.financial" not in events[1].widened_purposes["purchase_propensity"]
        assert ledger.verify().ok


def test_a_partner_on_the_bundled_vocabulary_records_nothing(tmp_path: Path, insurer) -> None:  # noqa: ANN001
    config, _ = insurer
    _write_config(config, with_vocabulary=False)
    cfg = load_partner_config(config)
    with Ledger.open(cfg.ledger_url, signing_key_path=cfg.ledger_key_path, origin="fedcrm/insurer") as ledger:
        vocabulary_for_gate(cfg, ledger)
        assert ledger.events_of_kind("vocabulary") == []


def test_a_broken_vocabulary_file_is_a_preflight_error_naming_every_problem(insurer) -> None:  # noqa: ANN001
    config, task = insurer
    _write_config(config, with_vocabulary=True)
    vocab_file = config.parent / "task" / "vocabulary.yaml"
    vocab_file.write_text(
        "data_categories:\n"
        "- {key: user.demographic.household.size, name: Size, extension: true, parent_key: user.demographic}\n"
        "- {key: user.financial.tier, name: Tier, extension: true, parent_key: user.financial.tier.gold}\n")
    report = check_partner(config, task)
    messages = [f.message for f in report.errors if f.kind == "vocabulary"]
    assert len(messages) == 2 and all(str(vocab_file) in m for m in messages)
    assert any("parent_key 'user.demographic' is not its dotted prefix" in m for m in messages)
    assert any("parent_key 'user.financial.tier.gold'" in m and "cycles" in m for m in messages)
    vocab_file.write_text(
        "data_categories:\n"
        "- {key: user.loyalty.tier, name: Tier, extension: true}\n"
        "- {key: user.demographic.household.size.adults, name: Adults, extension: true}\n"
        "- {key: user.demographic.household.size, name: Size, extension: true}\n"  # after its child: fine
        "- {key: user.financial, name: Again, extension: true}\n"
        "purpose_categories:\n  purchase_propensty: [user.financial]\n  churn_prediction: [user.shoe_size]\n")
    bad = load_vocabulary_messages(vocab_file)
    assert len(bad) == 4, bad
    assert any("unknown parent 'user.loyalty'" in m for m in bad)
    assert any("'user.financial' is already defined" in m for m in bad)
    assert any("unknown purpose 'purchase_propensty'" in m for m in bad)
    assert any("purpose_categories.churn_prediction names unknown data category 'user.shoe_size'" in m for m in bad)


def load_vocabulary_messages(path: Path) -> list[str]:
    from fedcrm.consent.taxonomy import load_vocabulary
    from fedcrm.errors import VocabularyError

    with pytest.raises(VocabularyError) as err:
        load_vocabulary(path)
    return str(err.value).splitlines()


def test_generalised_bands_are_checked_against_the_task_vocabulary(insurer) -> None:  # noqa: ANN001
    config, task = insurer
    _write_config(config, with_vocabulary=True)
    bands = ('type = "integer"\ngeneralise = { bins = [18, 30, 50, 65, 120], '
             'labels = ["18-29", "30-49", "50-64", "{last}"] }')
    text = config.read_text().replace('type = "categorical"\ncategory = "user.demographic.age_range"',
                                      bands + '\ncategory = "user.demographic.age_range"')
    assert text != config.read_text()
    export = pd.read_csv(config.parent / "policies.csv")
    export["AgeBand"] = np.random.default_rng(1).integers(18, 90, len(export))
    export.to_csv(config.parent / "policies.csv", index=False)
    config.write_text(text.replace("{last}", "65+"))
    assert not [f for f in check_partner(config, task).errors if f.kind == "values"]
    config.write_text(text.replace("{last}", "65-119"))
    (finding,) = [f for f in check_partner(config, task).errors if f.kind == "values"]
    assert "['65-119']" in finding.message and "age_band" in finding.message


def test_consents_for_a_purpose_the_vocabulary_file_adds_are_imported_with_it(insurer) -> None:  # noqa: ANN001
    from fedcrm.cli import app

    config, _ = insurer
    _write_config(config, with_vocabulary=False)
    vocab_file = config.parent / "task" / "cross_sell.yaml"
    vocab_file.write_text(VOCABULARY + "purposes:\n- key: insurance_cross_sell\n  name: Cross-sell\n"
                          "  legal_basis: consent\n  retention_days: 365\n"
                          "  data_categories: [user.demographic.household, user.behavior.purchase_history]\n")
    cfg = load_partner_config(config)
    rows = ["customer_id,purpose,category,action,legal_basis,effective_at,recorded_at,source,notice_version"]
    rows += [f"P{i:05d},insurance_cross_sell,user.demographic.household,grant,consent,2025-01-01T00:00:00Z,"
             "2025-01-01T00:00:00Z,web,v1" for i in range(20)]
    csv = config.parent / "consents.csv"
    csv.write_text("\n".join(rows) + "\n")
    args = ["consent", "import", str(csv), "--partner-key", str(cfg.key_path), "--ledger", cfg.ledger_url,
            "--signing-key", str(cfg.ledger_key_path), "--origin", "fedcrm/insurer"]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 1 and "insurance_cross_sell" in refused.output
    imported = CliRunner().invoke(app, [*args, "--vocabulary", str(vocab_file)])
    assert imported.exit_code == 0, imported.output
    with Ledger.open(cfg.ledger_url) as ledger:
        assert len(ledger.consent_events(upto_size=ledger.tree_size())) == 20
