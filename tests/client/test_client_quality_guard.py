"""Quality guard: spelling repair never rewrites one valid value as another; values outside the task are found."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from fedcrm.client.config import load_partner_config
from fedcrm.client.ingest import ingest, load_customers
from fedcrm.client.pseudonymise import create_key
from fedcrm.client.quality import OUT_OF_VOCABULARY, SPELLING, assess
from fedcrm.client.quality_rules import learn_spellings, quality_rules
from fedcrm.paths import DATASETS
from fedcrm.protocol import TaskSchema

CONFIG = """
name = "G"
[source]
path = "export.csv"
chunk_rows = 500
max_reject_fraction = 1.0
[columns.id]
role = "customer_id"
category = "user.unique_id"
[columns.gender]
role = "feature"
type = "categorical"
category = "user.demographic.gender"
[columns.plan]
role = "feature"
type = "categorical"
category = "user.behavior.service_subscription"
{plan_map}
[quality.spelling]
action = "fix"
fuzzy_threshold = 80
{vocabulary}
"""


def _partner(tmp_path: Path, gender: Counter[str], plan: Counter[str], *, plan_map: str = "",
             vocabulary: str = "") -> Path:
    values = [v for v, n in gender.items() for _ in range(n)]
    plans = [v for v, n in plan.items() for _ in range(n)]
    rng = np.random.default_rng(0)
    rng.shuffle(values)
    rng.shuffle(plans)
    plans = (plans * (len(values) // len(plans) + 1))[: len(values)]
    pd.DataFrame({"id": [f"c{i}" for i in range(len(values))], "gender": values, "plan": plans}).to_csv(
        tmp_path / "export.csv", index=False)
    config = tmp_path / "partner.toml"
    config.write_text(CONFIG.format(plan_map=plan_map, vocabulary=vocabulary))
    create_key(tmp_path / "partner.key")
    return config


def test_fuzzy_repair_never_rewrites_female_as_male(tmp_path: Path) -> None:
    # The measured case: ratio('female', 'male') = 80, so threshold 80 used to join 3,541 'Female' rows to 'Male'.
    config = load_partner_config(_partner(tmp_path, Counter(Female=3541, Male=3502, Femal=7, Malee=4),
                                          Counter(Basic=1)))
    maps = learn_spellings(config, quality_rules(config))
    assert maps.variants("gender") == {"Femal": "Female", "Malee": "Male"}
    ingest(config)
    assert load_customers(config)["gender"].value_counts().to_dict() == {"Female": 3548, "Male": 3506}


def test_a_declared_valid_value_is_never_a_variant_however_rare(tmp_path: Path) -> None:
    # Only three 'Female' rows: rare enough to look like a typo, but the partner declares it valid.
    vocabulary = 'vocabulary = { gender = ["Female", "Male"] }'
    config = load_partner_config(_partner(tmp_path, Counter(Female=3, Male=500), Counter(Basic=1),
                                          vocabulary=vocabulary))
    assert "Female" not in learn_spellings(config, quality_rules(config)).variants("gender")


def test_values_outside_the_task_vocabulary_are_a_finding_and_task_values_are_protected(tmp_path: Path) -> None:
    task = TaskSchema.model_validate({
        "name": "t", "version": "1", "purpose": "churn_prediction", "label": {"name": "y", "positive_value": "1"},
        "features": [{"name": "plan", "type": "categorical", "vocabulary": ["Basic", "Premium", "Pro"]}],
    })
    # 'Pro' is valid and rare; 'Gold' is outside the task; 'Premum' is a typo of 'Premium'.
    config = load_partner_config(_partner(tmp_path, Counter(Male=600), Counter(Basic=300, Premium=280, Pro=5,
                                                                              Premum=4, Gold=11)))
    report = assess(config, task=task)
    assert report.groups[(SPELLING, "plan")].examples[0]["detail"] == "canonical spelling: 'Premium'"
    outside = report.groups[(OUT_OF_VOCABULARY, "plan")]
    assert {e["value"] for e in outside.examples} == {"Gold"}
    assert outside.count == 11  # every Gold row; the Premum rows are fixed to Premium first
    assert "value_map" in outside.action
    # 'Pro' is an abbreviation of nothing the task knows, and valid: never rewritten.
    assert "Pro" not in learn_spellings(config, quality_rules(config), task=task).variants("plan")


def test_the_telco_template_bounds_every_number_realistically(tmp_path: Path) -> None:
    template = (DATASETS / "telco" / "partner_template.toml").read_text().replace("{name}", "T")
    (tmp_path / "partner.toml").write_text(template)
    config = load_partner_config(tmp_path / "partner.toml")
    data = pd.read_csv(DATASETS / "telco_churn.csv")
    bounded = 0
    for column, spec in config.columns.items():
        if spec.type not in ("numeric", "integer") or spec.role != "feature":
            continue
        assert spec.min is not None and spec.max is not None, f"{column} needs both bounds"
        observed = pd.to_numeric(data[column], errors="coerce")
        assert observed.min() >= spec.min and observed.max() <= spec.max, column  # the real data passes
        assert spec.max <= 30 * observed.max(), f"{column}: max {spec.max} lets implausible values through"
        bounded += 1
    assert bounded == 3


def test_the_quality_command_reports_values_outside_the_task_vocabulary(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedcrm.client.cli import app

    task = tmp_path / "task.yaml"
    task.write_text("name: t\nversion: '1'\npurpose: churn_prediction\nlabel: {name: y, positive_value: '1'}\n"
                    "features:\n- {name: plan, type: categorical, vocabulary: [Basic, Premium]}\n")
    config = _partner(tmp_path, Counter(Male=100), Counter(Basic=60, Premium=30, Gold=10))
    result = CliRunner().invoke(app, ["quality", "--config", str(config), "--task", str(task)])
    assert result.exit_code == 0, result.output
    assert "outside_task_vocabulary" in result.output
