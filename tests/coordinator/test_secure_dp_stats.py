"""The statistics round with DP on, through real SecAgg+ (``secaggplus_mod`` and workflow, in-process grid):
each partner noises its own cells before masking, the coordinator's sum carries that noise, every partner's
spend is in its ledger, and nothing a partner sends holds an exact statistic of its customers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from fedcrm.client.config import load_partner_config
from fedcrm.client.dp_sums import STATISTICS
from fedcrm.client.flower_app import app
from fedcrm.client.partner_session import clear_round_views
from fedcrm.consent import budget
from fedcrm.consent.ledger import Ledger
from fedcrm.coordinator.secure_sum import SecureSumSettings, secure_sum
from fedcrm.coordinator.workflows import StageGrid
from fedcrm.protocol import ROWS_KEY, SecureStatisticsOrder, TaskSchema, load_task_schema, statistics_cells
from fedcrm.secure_vector import SecureVectorCodec
from tests.client.test_client_dp_sums import _exact_clipped, bounded_task_file
from tests.federation import approve_task, copy_partners
from tests.inprocess_grid import InProcessGrid


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], TaskSchema]:
    tmp = tmp_path_factory.mktemp("dpstats")
    task_file = bounded_task_file(tmp)
    partners = copy_partners(tmp, egress="full")
    for config in partners:
        approve_task(config, task_file)
    clear_round_views()
    return partners, load_task_schema(task_file)


def test_noised_secure_statistics_carry_each_partners_noise_and_no_exact_statistic_leaves(setup) -> None:  # noqa: ANN001
    partners, task = setup
    codec = SecureVectorCodec()
    cells = statistics_cells(task)
    order = SecureStatisticsOrder(run_id="dp-stats", server_round=0, task_schema=task, task_schema_sha256=task.sha256(),
                                  cells=cells, dp_noise=True, fraction_bits=codec.fraction_bits, limbs=codec.limbs,
                                  quantization_range=codec.quantization_range, modulus_range=codec.modulus_range)
    grid = InProcessGrid(app, partners)
    result = secure_sum(StageGrid(grid, 60.0), order=dict(order.to_config()), cells=cells,
                        node_ids=grid.get_node_ids(), node_names={1: "A", 2: "B", 3: "C"},
                        settings=SecureSumSettings(num_partners=3, min_partners=3, stage_timeout=60.0, codec=codec),
                        server_round=0, stage="stats")
    assert result.contributors == ["A", "B", "C"]
    exact = {p.parent.name: _exact_clipped(p, task) for p in partners}
    stds = []
    for config in partners:  # every partner spent its own allotment, before its vector left
        with Ledger.open(load_partner_config(config).ledger_url) as ledger:
            assert ledger.verify().ok
            (spend,) = [e for _, e in budget.spends(ledger)]
        assert (spend.mechanism, spend.run_id, spend.server_round) == (STATISTICS, "dp-stats", 0)
        (release,) = spend.accountant_state["releases"]
        stds.append(release["noise_multiplier"] * math.sqrt(release["units"]))  # the row count's noise std
    total_rows = sum(c[ROWS_KEY] for c in exact.values())
    noise_std = math.sqrt(sum(s * s for s in stds))
    assert result.sums[ROWS_KEY] != total_rows
    assert abs(result.sums[ROWS_KEY] - total_rows) < 6 * noise_std, "noise of the calibrated size, not more"
    # wire capture: every reply each partner sent (its egress journal, exact bytes)
    for config in partners:
        egress = config.parent / "work" / "egress"
        entries = [json.loads(line) for line in (egress / "journal.jsonl").read_text().splitlines()]
        wire = b"".join((egress / e["wire_file"]).read_bytes() for e in entries)
        for cell, value in exact[config.parent.name].items():
            for text in {repr(value), f"{value:g}", str(int(value)) if float(value).is_integer() else ""}:
                if len(text) >= 5:
                    assert text.encode() not in wire, f"{cell} = {value} left partner {config.parent.name}"
            assert np.float64(value).tobytes() not in wire
        for e in entries:
            assert all(not arrays for arrays in e["arrays"].values()), "an unmasked array left the partner"


def test_an_analytics_run_with_dp_noises_statistics_and_profiles_and_records_both(tmp_path: Path) -> None:
    """[run.dp] statistics and profiles through the analytics run (real SecAgg+ on an in-process grid)."""
    import shutil

    from fedcrm.client.dp_sums import PROFILES
    from fedcrm.client.features import encode_features
    from fedcrm.client.federated.kmeans import assign
    from fedcrm.client.ingest import load_customers
    from fedcrm.client.partner_session import PartnerSession
    from fedcrm.coordinator.analytics_run import AnalyticsSettings, run_analytics
    from fedcrm.coordinator.registry import read_events
    from fedcrm.coordinator.run_config import RunConfig
    from fedcrm.coordinator.runner import plan_run
    from fedcrm.coordinator.server_app import Federation
    from fedcrm.paths import DATASETS
    from tests.federation import init_partner

    task_file = bounded_task_file(tmp_path, DATASETS / "tasks" / "telco_segments.yaml")
    task = load_task_schema(task_file)
    configs = []
    for name in ("P", "Q"):
        shutil.copytree(DATASETS / "examples" / "overlap_pair" / name, tmp_path / name)
        config = tmp_path / name / "partner.toml"
        init_partner(config)
        approve_task(config, task_file)
        configs.append(config)
    clear_round_views()
    cfg = RunConfig(task=task_file, run_id="dp-analytics", stage_timeout=120.0,
                    dp={"statistics": True, "profiles": True})
    plan = plan_run(cfg, 2, tmp_path / "runs")
    plan.analytics = AnalyticsSettings(k_values=(2,), candidates_per_k=5, max_iter=3,
                                       federated_restarts=1).model_dump(mode="json")
    results = run_analytics(Federation(plan), InProcessGrid(app, configs))
    stats = next(e for e in read_events(plan.run_dir) if e["event"] == "statistics")
    assert stats["dp_noise_asked"] is True
    assert stats["dp_epsilon"] == {"P": 0.5, "Q": 0.5}, "each partner's spend, as its receipt reported it"
    for config in configs:
        with Ledger.open(load_partner_config(config).ledger_url) as ledger:
            mine = [e for _, e in budget.spends(ledger) if e.run_id == "dp-analytics"]
        assert [e.mechanism for e in mine] == [STATISTICS, PROFILES]
        assert mine[0].server_round == 0 and mine[1].server_round > 0
    # the consortium's profile counts carry the partners' noise: not the exact counts over the minimum
    frames = [load_customers(PartnerSession(c).config) for c in configs]
    scaling = {k: tuple(v) for k, v in results["scaling"].items()}
    centres = np.array(results["segments"]["centroids"])
    labels = [assign(encode_features(f, task, scaling), centres) for f in frames]
    exact = [sum(int((lab == p["segment"]).sum()) for lab in labels) for p in results["segments"]["profiles"]]
    shown = [p["customers"] for p in results["segments"]["profiles"]]
    assert shown != exact, "profile counts must carry noise"
    assert all(s is None or abs(s - e) < 6 * 50 for s, e in zip(shown, exact, strict=True))
