"""No bundled data set is known to the partner code: any export works by config alone.

The partner's code (client/) and the model code (models/) must not name a column or a
category value of the bundled exports. If they did, a partner whose export spells things
differently would need a code change, and the bundled demo would pass for the wrong
reason. The check parses every file with ``ast`` and compares, case-sensitively and
exactly, every string constant and every identifier (names, attributes, function,
class, argument and keyword names, imported names) with the list below.

Only *distinctive* names are listed: words that identify the bundled IBM Telco and
CDNOW exports or the bundled task schemas. Generic CRM words that also appear in them
(``gender``, ``tenure``, ``Partner``, ``Contract``, ``Yes``/``No``, ``date``,
``customer_id``, ``frequency``/``recency`` — the latter are the names of fedcrm's own
derived RFM summaries) are deliberately left out: code may legitimately use them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from fedcrm.paths import REPO_ROOT

SCANNED = ("client", "models")

#: Column names of the bundled exports (Telco customer export, CDNOW purchase export).
EXPORT_COLUMNS = {
    "customerID", "SeniorCitizen", "Dependents", "PhoneService", "MultipleLines", "InternetService",
    "OnlineSecurity", "OnlineBackup", "DeviceProtection", "TechSupport", "StreamingTV", "StreamingMovies",
    "PaperlessBilling", "PaymentMethod", "MonthlyCharges", "TotalCharges", "Churn",
    "number_of_cds", "dollar_value",
}
#: Category values of the bundled exports and task vocabularies.
CATEGORY_VALUES = {
    "Month-to-month", "One year", "Two year", "Fiber optic", "DSL", "No internet service", "No phone service",
    "Electronic check", "Mailed check", "Bank transfer (automatic)", "Credit card (automatic)",
}
#: Feature names of the bundled task schemas that only a specific data set would have.
TASK_FEATURES = {
    "senior_citizen", "has_dependents", "tenure_months", "multiple_lines", "internet_service", "online_security",
    "online_backup", "device_protection", "tech_support", "streaming_tv", "streaming_movies", "paperless_billing",
    "payment_method", "monthly_charges", "total_charges", "telco_churn", "cdnow_propensity",
}
FORBIDDEN = EXPORT_COLUMNS | CATEGORY_VALUES | TASK_FEATURES


def _tokens(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, text) of every string constant and identifier in a module."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.append((line, node.value))
        elif isinstance(node, ast.Name):
            out.append((line, node.id))
        elif isinstance(node, ast.Attribute):
            out.append((line, node.attr))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.append((line, node.name))
        elif isinstance(node, ast.arg):
            out.append((line, node.arg))
        elif isinstance(node, ast.keyword) and node.arg:
            out.append((line, node.arg))
        elif isinstance(node, ast.alias):
            out.append((line, node.asname or node.name))
    return out


def dataset_literals(path: Path, root: Path = REPO_ROOT) -> list[str]:
    """``file:line: 'text'`` for every forbidden literal or identifier in one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [f"{path.relative_to(root)}:{line}: {text!r}" for line, text in _tokens(tree) if text in FORBIDDEN]


def _files() -> list[Path]:
    return sorted(p for folder in SCANNED for p in (REPO_ROOT / folder).rglob("*.py"))


def test_the_scan_covers_the_partner_and_model_code() -> None:
    names = {p.relative_to(REPO_ROOT).as_posix() for p in _files()}
    assert {"client/ingest.py", "client/features.py", "client/score.py", "models/nets.py"} <= names


def test_the_scanner_finds_every_kind_of_occurrence(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import x as MonthlyCharges\n"
        "a = frame['customerID']\n"
        "b = frame.TotalCharges\n"
        "def SeniorCitizen(Churn, *, PaymentMethod=1): return f(number_of_cds=2)\n"
        "c = 'Month-to-month'\n"
        "d = 'gender'; e = 'month-to-month'; f = 'Fiber optic service'\n"
    )
    found = {hit.split(": ", 1)[1] for hit in dataset_literals(probe, tmp_path)}
    assert found == {repr(w) for w in ("MonthlyCharges", "customerID", "TotalCharges", "SeniorCitizen", "Churn",
                                       "PaymentMethod", "number_of_cds", "Month-to-month")}


@pytest.mark.parametrize("path", _files(), ids=lambda p: p.relative_to(REPO_ROOT).as_posix())
def test_no_bundled_column_or_value_is_named_in_code(path: Path) -> None:
    hits = dataset_literals(path)
    assert not hits, "data-set specifics belong in the partner config or task schema, not in code:\n" + "\n".join(hits)
