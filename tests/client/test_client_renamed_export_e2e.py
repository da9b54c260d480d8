"""Any export works by config alone: a German-spelt copy of the Telco partners trains the same model.

The bundled skewed Telco partners are rewritten the way another company's CRM would
export them: every column renamed (``Contract`` → ``vertragsart``), every category value
renamed (``Month-to-month`` → ``monatlich``), yes/no as ``J``/``N``, the label as
``abgewandert``, semicolons between fields and decimal commas in the charges. Only the
partner configs change (``feature`` and ``value_map`` map the new spelling back to the
task); no code does. Both federations use the same partner keys, rows and seed, so the
encoded data are identical: the statistics round must agree exactly, and the federated
metrics up to SecAgg+'s stochastic quantisation.
"""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import tomli_w
from typer.testing import CliRunner

from fedcrm.client.cli import app as client_app
from fedcrm.paths import DATASETS
from tests.federation import approve_task

PARTNERS = ("A", "B", "C")

# Original column → (new column, {original value → new value}); the partner config gets the inverse.
YES_NO = {"Yes": "J", "No": "N"}
NO_INTERNET = {"Yes": "ja", "No": "nein", "No internet service": "kein Internet"}
RENAMED: dict[str, tuple[str, dict[str, str]]] = {
    "customerID": ("kundennr", {}),
    "gender": ("geschlecht", {"Female": "weiblich", "Male": "maennlich"}),
    "SeniorCitizen": ("rentner", {"1": "ja", "0": "nein"}),
    "Partner": ("partnerschaft", YES_NO),
    "Dependents": ("angehoerige", YES_NO),
    "tenure": ("laufzeit_monate", {}),
    "PhoneService": ("festnetz", YES_NO),
    "MultipleLines": ("mehrere_leitungen", {"Yes": "ja", "No": "nein", "No phone service": "kein Festnetz"}),
    "InternetService": ("internetart", {"DSL": "Kupfer", "Fiber optic": "Glasfaser", "No": "keiner"}),
    "OnlineSecurity": ("online_schutz", NO_INTERNET),
    "OnlineBackup": ("online_sicherung", NO_INTERNET),
    "DeviceProtection": ("geraeteschutz", NO_INTERNET),
    "TechSupport": ("technik_hilfe", NO_INTERNET),
    "StreamingTV": ("fernsehen_stream", NO_INTERNET),
    "StreamingMovies": ("filme_stream", NO_INTERNET),
    "Contract": ("vertragsart", {"Month-to-month": "monatlich", "One year": "1 Jahr", "Two year": "2 Jahre"}),
    "PaperlessBilling": ("papierlose_rechnung", YES_NO),
    "PaymentMethod": ("zahlungsart", {"Electronic check": "E-Scheck", "Mailed check": "Scheck per Post",
                                      "Bank transfer (automatic)": "Lastschrift",
                                      "Credit card (automatic)": "Kreditkarte"}),
    "MonthlyCharges": ("monatsbetrag", {}),
    "TotalCharges": ("gesamtbetrag", {}),
    "Churn": ("abgewandert", YES_NO),
}
DECIMAL_COMMA = {"MonthlyCharges", "TotalCharges"}


def rename_export(src: Path, dst: Path) -> None:
    """Write the renamed, semicolon-separated, decimal-comma version of one export."""
    frame = pd.read_csv(src, dtype=str, keep_default_na=False)
    out = pd.DataFrame(index=frame.index)
    for column, (new, values) in RENAMED.items():
        series = frame[column].map(lambda v, m=values: m.get(v, v))
        if column in DECIMAL_COMMA:
            series = series.str.replace(".", ",", regex=False)
        out[new] = series
    out.to_csv(dst, sep=";", index=False)


def rename_config(original: dict[str, Any]) -> dict[str, Any]:
    """The partner config for the renamed export: same roles and categories, new names and value maps."""
    config = dict(original)
    config["source"] = {**original["source"], "delimiter": ";", "decimal": ","}
    columns: dict[str, Any] = {}
    for column, spec in original["columns"].items():
        new, values = RENAMED[column]
        spec = dict(spec)
        inverse = {v: k for k, v in values.items()}
        if spec["role"] in ("feature", "quasi_identifier"):
            spec.setdefault("feature", column)
        if spec["role"] == "label":
            spec["positive"] = [values[v] for v in spec["positive"]]
            spec["negative"] = [values[v] for v in spec["negative"]]
        elif spec.get("type") == "boolean":
            trues, falses = ("ja", "nein") if "1" in values else ("J", "N")
            spec["true_values"], spec["false_values"] = [trues], [falses]
        elif spec.get("type") == "categorical" and inverse:
            spec["value_map"] = inverse
        if "gap" in spec:
            spec["gap"] = {**spec["gap"], "when_column": RENAMED[spec["gap"]["when_column"]][0]}
        columns[new] = spec
    config["columns"] = columns
    return config


def _init(config: Path) -> None:
    result = CliRunner().invoke(client_app, ["init", "--config", str(config)])
    assert result.exit_code == 0, result.output
    approve_task(config)  # before the copy: the renamed partner shares this ledger, approval included


@pytest.fixture(scope="module")
def partners(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[Path]]:
    """Original and renamed partners sharing keys (so pseudonyms and hold-out splits agree)."""
    root = tmp_path_factory.mktemp("renamed")
    original, renamed = [], []
    for name in PARTNERS:
        src = root / "original" / name
        shutil.copytree(DATASETS / "partners" / "telco" / "skewed" / name, src)
        _init(src / "partner.toml")
        dst = root / "renamed" / name
        shutil.copytree(src, dst)  # the same partner key; nothing ingested yet
        rename_export(src / "customers.csv", dst / "customers.csv")
        raw = tomllib.loads((src / "partner.toml").read_text())
        (dst / "partner.toml").write_text(tomli_w.dumps(rename_config(raw)))
        original.append(src / "partner.toml")
        renamed.append(dst / "partner.toml")
    return original, renamed


def test_the_renamed_export_shares_no_column_name_or_category_value_with_the_original(partners) -> None:  # noqa: ANN001
    _, renamed = partners
    text = (renamed[0].parent / "customers.csv").read_text()
    header = text.splitlines()[0].split(";")
    assert not set(header) & set(RENAMED)
    for values in (v for _, (_, m) in RENAMED.items() for v in m):
        if len(values) > 3:  # whole words only: 'No'/'Yes' are substrings of nothing renamed
            assert values not in text, values
    assert ";" in text.splitlines()[1] and "," in text.splitlines()[1].split(";")[18]


@pytest.mark.slow
def test_a_renamed_export_trains_the_same_federated_model_by_config_alone(partners, tmp_path: Path) -> None:  # noqa: ANN001
    from fedcrm.coordinator.registry import read_events
    from fedcrm.coordinator.run_config import load_run_config
    from fedcrm.coordinator.runner import run_federation

    original, renamed = partners
    results = {}
    for label, configs in (("original", original), ("renamed", renamed)):
        cfg = load_run_config(DATASETS / "telco" / "run.toml", {"rounds": 2, "run_id": label, "seed": 0})
        result = run_federation(cfg, configs, runs_dir=tmp_path / "runs")
        assert result.succeeded, f"{label}: {result.error}"
        assert [len(r["secagg_stages"]) for r in result.rounds] == [4, 4]
        results[label] = result
    stats = {k: next(e for e in read_events(r.run_dir) if e["event"] == "statistics") for k, r in results.items()}
    # Identical encoding: the same rows per partner and the same federated means and deviations.
    assert stats["renamed"]["total_rows"] == stats["original"]["total_rows"]
    assert stats["renamed"]["scaling"].keys() == stats["original"]["scaling"].keys()
    for feature, mean_std in stats["original"]["scaling"].items():
        assert stats["renamed"]["scaling"][feature] == pytest.approx(mean_std, rel=1e-12)
    for r_orig, r_new in zip(results["original"].rounds, results["renamed"].rounds, strict=True):
        assert r_new["federated"]["roc_auc"] == pytest.approx(r_orig["federated"]["roc_auc"], abs=0.01)
        assert r_new["federated"]["loss"] == pytest.approx(r_orig["federated"]["loss"], abs=1e-3)
        assert {p: v["num_examples"] for p, v in r_new["evaluate"].items()} == \
            {p: v["num_examples"] for p, v in r_orig["evaluate"].items()}
