"""The analytics run end to end on an in-process grid (real ClientApps with secaggplus_mod, real SecAgg+
workflow, no Ray): federated segments, profiles and overlap equal framework-free computations over the
same partners, and no per-customer value or per-partner statistic leaves a partner."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedcrm.client.features import encode_features
from fedcrm.client.federated.kmeans import assign
from fedcrm.client.flower_app import app
from fedcrm.client.ingest import load_customers
from fedcrm.client.partner_session import PartnerSession
from fedcrm.coordinator.analytics_report import write_report
from fedcrm.coordinator.analytics_run import AnalyticsSettings, run_analytics
from fedcrm.coordinator.run_config import RunConfig
from fedcrm.coordinator.runner import plan_run
from fedcrm.coordinator.server_app import Federation
from fedcrm.paths import DATASETS
from fedcrm.protocol import load_task_schema
from tests.federation import approve_task, init_partner
from tests.inprocess_grid import InProcessGrid

PAIR = DATASETS / "examples" / "overlap_pair"
TASK_PATH = DATASETS / "tasks" / "telco_segments.yaml"
TASK = load_task_schema(TASK_PATH)
TRUTH = json.loads((PAIR / "truth.json").read_text())


@pytest.fixture(scope="module")
def analytics(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[Path], Path]:
    tmp = tmp_path_factory.mktemp("analytics")
    configs = []
    for name in ("P", "Q"):
        shutil.copytree(PAIR / name, tmp / name)
        config = tmp / name / "partner.toml"
        config.write_text(config.read_text().replace("[privacy]\n", '[privacy]\negress_journal = "full"\n'))
        init_partner(config)
        approve_task(config, TASK_PATH)
        configs.append(config)
    plan = plan_run(RunConfig(task=TASK_PATH, run_id="segments-test", stage_timeout=120.0), 2, tmp / "runs")
    plan.analytics = AnalyticsSettings(k_values=(2, 3), candidates_per_k=15, max_iter=8, federated_restarts=2,
                                       overlap_pairs=[("P", "Q")]).model_dump(mode="json")
    results = run_analytics(Federation(plan), InProcessGrid(app, configs))
    return results, configs, plan.run_dir


def _frames(configs: list[Path]) -> list[pd.DataFrame]:
    return [load_customers(PartnerSession(c).config) for c in configs]


def test_segment_profiles_equal_a_framework_free_computation(analytics) -> None:  # noqa: ANN001
    results, configs, _ = analytics
    seg = results["segments"]
    assert seg["k"] in (2, 3) and len(seg["profiles"]) == seg["k"]
    centres = np.array(seg["centroids"])
    frames = _frames(configs)
    labels = [assign(encode_features(f, TASK, {k: tuple(v) for k, v in results["scaling"].items()}), centres)
              for f in frames]
    pooled, pooled_labels = pd.concat(frames, ignore_index=True), np.concatenate(labels)
    for profile in seg["profiles"]:
        j = profile["segment"]
        members = pooled[pooled_labels == j]
        # each partner withholds a segment it holds fewer than 10 customers of
        local = [int((lab == j).sum()) for lab in labels]
        expected = sum(n for n in local if n >= 10)
        assert profile["customers"] == expected
        kept = pd.concat([f[lab == j] for f, lab in zip(frames, labels, strict=True) if (lab == j).sum() >= 10])
        for feature, stats in profile["numeric"].items():
            values = kept[feature].astype(float).dropna()
            assert stats["mean"] == pytest.approx(values.mean(), abs=1e-5)
            assert stats["std"] == pytest.approx(values.std(ddof=0), abs=1e-4)
        assert len(members) >= expected
    assert results["customers"] == sum(p["customers"] or 0 for p in seg["profiles"])


def test_overlap_of_the_bundled_pair_is_the_true_overlap(analytics) -> None:  # noqa: ANN001
    results, _, _ = analytics
    counts = {o["identifier"]: o["count"] for o in results["overlap"]}
    assert counts == {"email": TRUTH["shared_email"], "phone": TRUTH["shared_phone"]}


def test_nothing_below_the_minimum_and_no_customer_value_leaves_a_partner(analytics) -> None:  # noqa: ANN001
    results, configs, _ = analytics
    for d in results["distributions"].values():
        assert all(c is None or c >= 10 for c in d["counts"])
    for config in configs:
        egress = config.parent / "work" / "egress"
        entries = [json.loads(x) for x in (egress / "journal.jsonl").read_text().splitlines()]
        wire = b"".join((egress / e["wire_file"]).read_bytes() for e in entries)
        # train replies: only masked vectors (no arrays) and receipts in the clear
        for e in entries:
            assert all(not arrays for arrays in e["arrays"].values())
            for names in e["metrics"].values():
                # num_examples is the SecAgg+ weight, 1 for every secure sum (the coordinator refuses others)
                assert set(names) <= {"fedcrm.partner", "fedcrm.consent-as-of", "fedcrm.ledger-checkpoint",
                                      "fedcrm.protocol-version", "num_examples"}
        frame = load_customers(PartnerSession(config).config)
        raw = pd.read_csv(config.parent / "customers.csv")
        for customer in raw["customerID"][:200]:
            assert customer.encode() not in wire
        for subject in frame["subject"][:200]:
            assert subject.split(":")[-1][:16].encode() not in wire, "a pseudonym left the partner"
        for value in raw["TotalCharges"].astype(str)[:200]:
            if len(value) >= 6:
                assert f'"{value}"'.encode() not in wire and f":{value},".encode() not in wire


def test_the_consortium_report_shows_aggregates_only(analytics) -> None:  # noqa: ANN001
    results, _, run_dir = analytics
    html = write_report(run_dir)
    text = html.read_text()
    assert "Consortium analytics" in text and f"{TRUTH['shared_email']:,}" in text
    for png in ("segment_sizes.png", "segment_profiles.png", "distributions.png", "overlap.png"):
        assert (html.parent / png).stat().st_size > 1000
    report = json.loads((html.parent / "report.json").read_text())
    assert report["min_count"] == 10 and "scaling" not in report
    assert "http" not in text.replace("http-equiv", "")  # nothing loads from elsewhere
