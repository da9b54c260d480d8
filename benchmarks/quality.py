"""Detection recall of the data-quality report on seeded messy exports with a truth file.

Run: ``.venv/bin/python -m benchmarks.quality``. Writes ``benchmarks/results/quality.json``
and ``docs/benchmarks-quality.md``.

For each seed, ``fedcrm.client.messy`` injects every defect kind at known lines of the
Telco export; ``fedcrm.client.quality.assess`` runs with the partner config the bundled
template gives, plus the added date column and the spelling rule ``fix``. Recall per
kind = injected (line, column) pairs found / injected; precision = found pairs that were
injected / found. A second run with zero numeric tolerance shows what the near-duplicate
rule's tolerance is for. Exits non-zero when any kind's recall is below 0.95.
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

from fedcrm.client.config import load_partner_config
from fedcrm.client.messy import KINDS, Truth, make_messy
from fedcrm.client.pseudonymise import create_key
from fedcrm.client.quality import EXACT_DUPLICATE, ID_CONFLICT, NEAR_DUPLICATE, QualityReport, assess
from fedcrm.client.quality_rules import quality_rules

ROOT = Path(__file__).resolve().parents[1]
CLEAN = ROOT / "datasets" / "telco_churn.csv"
TEMPLATE = ROOT / "datasets" / "telco" / "partner_template.toml"
RESULTS = ROOT / "benchmarks" / "results" / "quality.json"
DOC = ROOT / "docs" / "benchmarks-quality.md"
SEEDS = (0, 1, 2)
PER_KIND = 50
TARGET = 0.95
ROW_KINDS = (EXACT_DUPLICATE, NEAR_DUPLICATE)

EXTRA_CONFIG = """
[columns.record_date]
role = "ignore"
type = "date"

[quality.spelling]
action = "fix"
"""


def partner_dir(base: Path, seed: int) -> tuple[Path, Truth]:
    """A partner directory holding the messy export of ``seed``, its truth and its config."""
    d = base / f"seed{seed}"
    d.mkdir()
    truth = make_messy(CLEAN, d / "customers.csv", d / "truth.json", seed=seed, per_kind=PER_KIND,
                       id_column="customerID")
    text = TEMPLATE.read_text().replace("{name}", f"messy{seed}")
    text = text.replace("max_reject_fraction = 0.05", "max_reject_fraction = 1.0")
    (d / "partner.toml").write_text(text + EXTRA_CONFIG)
    create_key(load_partner_config(d / "partner.toml").key_path)
    return d / "partner.toml", truth


def found_pairs(report: QualityReport, kind: str) -> set[tuple[int, str | None]]:
    """(line, column) pairs the report gives for a kind (column None for whole-row kinds)."""
    if kind in ROW_KINDS:
        return {(line, None) for line in report.lines(kind)}
    return {(line, column) for (k, column), g in report.groups.items() if k == kind for line in g.lines}


def score(report: QualityReport, truth: Truth) -> dict[str, dict[str, Any]]:
    """Recall and precision per defect kind."""
    out = {}
    for kind in KINDS:
        want, got = truth.lines(kind), found_pairs(report, kind)
        hit = want & got
        out[kind] = {"injected": len(want), "found": len(got), "detected": len(hit),
                     "recall": len(hit) / len(want) if want else None,
                     "precision": len(hit) / len(got) if got else None,
                     "not_injected_examples": sorted(got - want)[:5]}
    return out


def run() -> dict[str, Any]:
    """Every seed, plus the tolerance ablation on seed 0."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in SEEDS:
            config_path, truth = partner_dir(Path(tmp), seed)
            config = load_partner_config(config_path)
            start = time.perf_counter()
            report = assess(config)
            seconds = time.perf_counter() - start
            rows.append({"seed": seed, "variant": "default rules", "rows": report.rows_read,
                         "rows_reaching_training": report.rows_kept, "seconds": round(seconds, 2),
                         "kinds": score(report, truth)})
            if seed == SEEDS[0]:
                strict = quality_rules(config).model_copy(deep=True)
                strict.near_duplicates.rel_tolerance = 0.0
                strict.near_duplicates.abs_tolerance = 0.0
                ablation = assess(config, rules=strict)
                kinds = score(ablation, truth)
                kinds[NEAR_DUPLICATE]["reported_as_id_conflict"] = len(
                    truth.lines(NEAR_DUPLICATE) & {(line, None) for line in ablation.lines(ID_CONFLICT)})
                rows.append({"seed": seed, "variant": "zero numeric tolerance", "rows": ablation.rows_read,
                             "rows_reaching_training": ablation.rows_kept, "kinds": kinds})
    return {"machine": {"python": platform.python_version(), "pandas": pd.__version__, "cpus": _cpus()},
            "source": str(CLEAN.relative_to(ROOT)), "per_kind": PER_KIND, "target_recall": TARGET, "rows": rows}


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def markdown(result: dict[str, Any]) -> str:
    """The docs page."""
    default = [r for r in result["rows"] if r["variant"] == "default rules"]
    lines = [
        "# Benchmark: data-quality detection recall on seeded messy exports", "",
        "Generated by `.venv/bin/python -m benchmarks.quality` (raw numbers: `benchmarks/results/quality.json`).",
        f"Machine: {result['machine']['cpus']} CPUs, Python {result['machine']['python']}, "
        f"pandas {result['machine']['pandas']}.", "",
        f"`fedcrm.client.messy` takes `{result['source']}` (7,043 customers) and, per seed, injects "
        f"{result['per_kind']} defects of each kind, each on its own row, and writes the truth file "
        "(kind, line, column). Exact duplicates are copies of a row inserted further down; near duplicates "
        "are copies with the id re-typed (case, spacing, punctuation) and every decimal value changed by up "
        "to 0.3 %; a `record_date` column (ISO dates) is added since the source has none, and some of its "
        "values are rewritten in another format; spellings are case changes, a trailing space or a unique "
        "abbreviation (\"Yes\" → \"Y\"); out-of-range values are negative amounts or counts. The report runs "
        "with the bundled partner template (plus the date column and `quality.spelling.action = \"fix\"`) "
        "and the default near-duplicate rule (ids: strip, upper-case, drop non-alphanumerics; numbers "
        "within 1 % or 0.01).", "",
        "## Recall and precision per defect kind (default rules)", "",
        "| kind | " + " | ".join(f"seed {r['seed']} recall" for r in default) + " | min recall | precision (all seeds) |",
        "|---|" + "---:|" * (len(default) + 2),
    ]
    for kind in KINDS:
        recalls = [r["kinds"][kind]["recall"] for r in default]
        found = sum(r["kinds"][kind]["found"] for r in default)
        hit = sum(r["kinds"][kind]["detected"] for r in default)
        lines.append(f"| {kind} | " + " | ".join(f"{x:.3f}" for x in recalls)
                     + f" | **{min(recalls):.3f}** | {hit / found:.3f} |")
    lines += ["", "| seed | rows | rows reaching training | report time (s) |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['seed']} | {r['rows']} | {r['rows_reaching_training']} | {r['seconds']} |" for r in default]
    ablation = next(r for r in result["rows"] if r["variant"] != "default rules")
    near = ablation["kinds"][NEAR_DUPLICATE]
    lines += [
        "", "Precision below 1 for `missing_value` is the source's own 11 blank totals (customers in their "
        "first month), which are real missing values but were not injected.", "",
        "## Why the numeric tolerance", "",
        f"With zero tolerance (seed {ablation['seed']}), near-duplicate recall is {near['recall']:.3f}: "
        f"{near['reported_as_id_conflict']} of the {near['injected']} re-typed customers are reported as "
        "`conflicting_duplicate_id` instead (same normalised id, values that differ), because their amounts "
        "differ by a few cents. The tolerance (`quality.near_duplicates.rel_tolerance` / `abs_tolerance`) "
        "is what separates \"entered twice with small differences\" from \"one id reused for another "
        "customer\".", "",
    ]
    return "\n".join(lines)


def main() -> int:
    """Run, write the results and the page, and fail below the target recall."""
    result = run()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    DOC.write_text(markdown(result))
    worst = min(r["kinds"][k]["recall"] for r in result["rows"] if r["variant"] == "default rules" for k in KINDS)
    print(f"minimum recall over kinds and seeds: {worst:.3f} (target {TARGET})")
    return 0 if worst >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
