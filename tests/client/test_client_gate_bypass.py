"""No partner code reaches customer data around the consent gate.

Two kinds of check:

1. **Static (ast)**, over every module under ``client/``:

   - *Reading files.* Only the ingestion modules call a file reader (pandas ``read_*``,
     pyarrow's parquet/csv/feather/dataset readers, the ``csv`` module, numpy's text/binary
     loaders, polars) or ingestion's raw-export readers (``iter_raw_chunks``,
     ``parse_chunk``), or open a path built from the export's location
     (``…source.path``) or an ingested table's file name. The allow-list, and why:

     - ``client/ingest.py`` — reads customer exports; owns the ingested, pseudonymised
       tables and their only loaders (``load_customers``, ``load_id_map``);
     - ``client/transaction_ingest.py`` — the same for transaction-level exports
       (``load_transactions``);
     - ``client/merge.py`` — builds one customer view from several exports (reads exports
       by definition);
     - ``client/quality.py``, ``client/quality_rules.py`` — the data-quality report and the
       rules it learns profile the raw export *before* ingestion, on the partner's own
       premises, through ingestion's own chunk reader; they prepare data, they do not use
       it for a purpose;
     - ``client/messy.py`` — generates synthetic messy exports from a clean CSV for
       quality tests; it never sees a real partner's customers;
     - ``client/erase.py``, ``client/keys.py`` — erasure and key rotation maintain the
       ingested tables (drop an erased customer's rows; map old to new pseudonyms); they
       hand no customer data to any purpose;
     - ``client/check.py`` — the preflight checks header and value maps through ingestion's
       own chunk reader before a run, like the quality report.

   - *Using ingested tables.* Everywhere else, the result of ``load_customers`` /
     ``load_transactions`` goes straight into ``gate(...)``: either as the call's argument,
     or through a local name that is used for nothing but being passed to ``gate``.

2. **Runtime**: the entry points of scoring and analytics refuse a plain DataFrame with a
   ``TypeError`` (they take only a ``ConsentedView``), and the federated stages of
   ``PartnerSession`` take no customer frame at all (they fetch theirs from the gate).
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pandas as pd
import pytest

from fedcrm.paths import REPO_ROOT

INGESTION_MODULES = frozenset({
    "client/ingest.py",
    "client/export_reader.py",  # the CSV reader ingestion and quality read exports through
    "client/transaction_ingest.py",
    "client/merge.py",
    "client/quality.py",
    "client/quality_rules.py",
    "client/messy.py",
    # Table maintenance, never a use for a purpose: erasure rewrites the ingested tables without
    # an erased customer, and key rotation reads the id map to log the old -> new pseudonyms.
    "client/erase.py",
    "client/keys.py",
    # The preflight reads the export's header and categorical values through ingestion's own
    # reader, like the quality report: preparing data before a run, never using it for a purpose.
    "client/check.py",
})

READER_MODULE_PREFIXES = ("pandas.read_", "polars.read_", "polars.scan_")
READERS = frozenset({
    "pyarrow.parquet.read_table", "pyarrow.parquet.ParquetFile", "pyarrow.parquet.ParquetDataset",
    "pyarrow.parquet.read_pandas", "pyarrow.csv.read_csv", "pyarrow.csv.open_csv", "pyarrow.feather.read_table",
    "pyarrow.feather.read_feather", "pyarrow.json.read_json", "pyarrow.dataset.dataset", "pyarrow.orc.read_table",
    "csv.reader", "csv.DictReader", "numpy.loadtxt", "numpy.genfromtxt", "numpy.load", "numpy.fromfile",
    "fedcrm.client.ingest.iter_raw_chunks", "fedcrm.client.ingest.parse_chunk",
})
TABLE_LOADERS = frozenset({"load_customers", "load_customers_lean", "open_customers_mapped", "load_transactions"})
DATA_FILE_NAMES = frozenset({"CUSTOMERS_FILE", "ID_MAP_FILE", "TRANSACTIONS_FILE", "REJECTS_FILE", "ROUND_TABLE_FILE"})
OPENERS = frozenset({"open", "read_text", "read_bytes"})


# --- the static scanners ------------------------------------------------------------------------


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name → fully qualified name, from every import in the module (functions included)."""
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                out[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                out[a.asname or a.name] = f"{node.module}.{a.name}"
    return out


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return None


def _qualified(func: ast.AST, aliases: dict[str, str]) -> str | None:
    dotted = _dotted(func)
    if dotted is None:
        return None
    root, _, rest = dotted.partition(".")
    base = aliases.get(root, root)
    return f"{base}.{rest}" if rest else base


def _mentions_data_path(node: ast.AST) -> bool:
    """Does an expression name the export's location or an ingested table's file?"""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute) and sub.attr == "path" and isinstance(sub.value, ast.Attribute) \
                and sub.value.attr == "source":
            return True
        if isinstance(sub, (ast.Name, ast.Attribute)) and (getattr(sub, "id", None) or getattr(sub, "attr", None)) \
                in DATA_FILE_NAMES:
            return True
    return False


def direct_reads(path: Path, root: Path = REPO_ROOT) -> list[str]:
    """``file:line: what`` for every direct read of partner data in one module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    aliases = _aliases(tree)
    hits = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _qualified(node.func, aliases) or ""
        if name in READERS or name.startswith(READER_MODULE_PREFIXES):
            hits.append(f"{path.relative_to(root)}:{node.lineno}: {name}(…)")
            continue
        last = node.func.attr if isinstance(node.func, ast.Attribute) else name
        target = node.func.value if isinstance(node.func, ast.Attribute) else None
        if last in OPENERS and any(_mentions_data_path(a) for a in [*node.args, *([target] if target else [])]):
            hits.append(f"{path.relative_to(root)}:{node.lineno}: {last}() on a partner data path")
    return hits


def _is_gate_call(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and (_dotted(node.func) or "").rsplit(".", 1)[-1] == "gate"


def _is_holdout_bucket_read(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """``table.column(HOLDOUT_BUCKET)`` / ``table[HOLDOUT_BUCKET]``: the bucket is a keyed hash of the pseudonym
    alone (no data category), lined up with the gate's kept rows through ``view.rows`` (see ConsentedView.rows)."""
    parent = parents.get(node)
    if isinstance(parent, ast.Subscript) and _dotted(parent.slice) == "HOLDOUT_BUCKET":
        return True
    call = parents.get(parent) if isinstance(parent, ast.Attribute) and parent.attr == "column" else None
    return isinstance(call, ast.Call) and [_dotted(a) for a in call.args] == ["HOLDOUT_BUCKET"]


def ungated_table_uses(path: Path, root: Path = REPO_ROOT) -> list[str]:
    """Loads of an ingested table whose result does anything but go into ``gate(...)``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    hits = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and (_dotted(node.func) or "").rsplit(".", 1)[-1] in TABLE_LOADERS):
            continue
        where = f"{path.relative_to(root)}:{node.lineno}"
        parent = parents.get(node)
        if _is_gate_call(parent):
            continue
        if isinstance(parent, ast.Assign) and len(parent.targets) == 1 and isinstance(parent.targets[0], ast.Name):
            name = parent.targets[0].id
            scope = parent
            while scope in parents and not isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Module)):
                scope = parents[scope]
            uses = [n for n in ast.walk(scope) if isinstance(n, ast.Name) and n.id == name and isinstance(n.ctx, ast.Load)]
            bad = [u for u in uses if not _is_gate_call(parents.get(u)) and not _is_holdout_bucket_read(u, parents)]
            if uses and not bad:
                continue
            hits.append(f"{where}: '{name}' from {(_dotted(node.func) or '')}() is used outside gate(...)")
        else:
            hits.append(f"{where}: {(_dotted(node.func) or '')}() result is not passed to gate(...)")
    return hits


def _client_modules() -> list[Path]:
    return sorted((REPO_ROOT / "client").rglob("*.py"))


def _rel(path: Path) -> str:
    return path.relative_to(REPO_ROOT).as_posix()


# --- the scanners can fail ----------------------------------------------------------------------


PROBE = '''
import pandas as pd
import pyarrow.parquet as pq
from pandas import read_parquet as rp
from fedcrm.client.ingest import CUSTOMERS_FILE, load_customers, iter_raw_chunks
from fedcrm.consent.gate import gate

def sneaky(config, ledger):
    a = pd.read_csv(config.resolve(config.source.path))
    b = pq.ParquetFile("x")
    c = rp(config.work_path / CUSTOMERS_FILE)
    d = (config.work_path / CUSTOMERS_FILE).read_bytes()
    e = open(config.source.path)
    f = list(iter_raw_chunks(config))
    frame = load_customers(config)
    print(len(frame))
    return gate(frame, {}, "p", None, [], ledger=ledger, use=None)

def honest(config, ledger):
    view = gate(load_customers(config), {}, "p", None, [], ledger=ledger, use=None)
    frame = load_customers(config)
    return gate(frame, {}, "p", None, [], ledger=ledger, use=None), open("partner.toml")

def careless(config):
    return load_customers(config).head()
'''


def test_the_scanners_find_reads_and_ungated_uses(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    reads = direct_reads(probe, tmp_path)
    assert [r.split(": ", 1)[0] for r in reads] == [f"probe.py:{n}" for n in (9, 10, 11, 12, 13, 14)]
    ungated = ungated_table_uses(probe, tmp_path)
    assert [u.split(": ", 1)[0] for u in ungated] == ["probe.py:15", "probe.py:25"]


# --- the code under client/ ---------------------------------------------------------------------


def test_the_allow_list_names_only_real_or_planned_ingestion_modules() -> None:
    present = {_rel(p) for p in _client_modules()}
    assert {"client/ingest.py", "client/transaction_ingest.py", "client/quality.py"} <= present
    assert not (INGESTION_MODULES - present) - {"client/merge.py"}  # merge.py: the unified view (in progress)


@pytest.mark.parametrize("path", [p for p in _client_modules() if _rel(p) not in INGESTION_MODULES], ids=_rel)
def test_only_ingestion_modules_read_partner_files(path: Path) -> None:
    hits = direct_reads(path)
    assert not hits, "partner data is read only by the ingestion modules:\n" + "\n".join(hits)


@pytest.mark.parametrize("path", [p for p in _client_modules() if _rel(p) not in INGESTION_MODULES], ids=_rel)
def test_ingested_tables_go_straight_into_the_gate(path: Path) -> None:
    hits = ungated_table_uses(path)
    assert not hits, "an ingested table may only be handed to gate():\n" + "\n".join(hits)


# --- the entry points ---------------------------------------------------------------------------


def _plain_frame() -> pd.DataFrame:
    return pd.DataFrame({"subject": ["k:1", "k:2"], "tenure": [1.0, 2.0], "amount": [3.0, 4.0]})


def test_scoring_refuses_a_plain_dataframe() -> None:
    from fedcrm.client.score import score_table
    from fedcrm.models.nets import build_model
    from fedcrm.paths import DATASETS
    from fedcrm.protocol import load_task_schema

    task = load_task_schema(DATASETS / "tasks" / "telco_churn.yaml")
    with pytest.raises(TypeError, match="ConsentedView"):
        score_table(_plain_frame(), build_model("logistic", task.width), task, {})  # type: ignore[arg-type]


def test_ensure_consented_refuses_anything_but_a_gate_view() -> None:
    from fedcrm.client.consented import ensure_consented

    for thing in (_plain_frame(), _plain_frame().to_dict(), None):
        with pytest.raises(TypeError, match="consent gate"):
            ensure_consented(thing, "entry")


def test_federated_stages_take_no_customer_frame() -> None:
    """statistics/fit/evaluate fetch their rows from the gate themselves; no caller can hand them any."""
    from fedcrm.client.partner_session import PartnerSession

    for stage in (PartnerSession.statistics, PartnerSession.fit, PartnerSession.evaluate):
        hints = inspect.get_annotations(stage, eval_str=True)
        frames = [n for n, t in hints.items() if t is pd.DataFrame or "DataFrame" in str(t)]
        assert not frames, f"PartnerSession.{stage.__name__} takes a frame parameter {frames}"
        entries = {"consented", "_consented", "round_data"} & set(stage.__code__.co_names)
        assert entries, f"PartnerSession.{stage.__name__} bypasses consented()"
    # Every entry reaches the one gating method, and that method calls the gate.
    assert "_consented" in PartnerSession.consented.__code__.co_names
    assert "_consented" in PartnerSession.round_data.__code__.co_names
    assert "gate" in PartnerSession._consented.__code__.co_names


@pytest.mark.parametrize("entry", ["analyse_customers", "analyse_transactions"])
def test_analytics_refuse_a_plain_dataframe(entry: str) -> None:
    from fedcrm.client import analytics

    function = getattr(analytics, entry)
    kwargs = ({"customer": "subject", "numeric": ["tenure"]} if entry == "analyse_customers"
              else {"customer": "subject", "date": "tenure", "amount": "amount", "observation_end": None})
    try:
        function(_plain_frame(), **kwargs)
    except TypeError as exc:
        assert "ConsentedView" in str(exc)
        return
    except Exception as exc:  # noqa: BLE001 - any other failure means no consent check ran first
        raise AssertionError(f"{entry} did not refuse a plain DataFrame first; it failed later with {exc!r}") from exc
    raise AssertionError(f"{entry} accepted a plain DataFrame")
