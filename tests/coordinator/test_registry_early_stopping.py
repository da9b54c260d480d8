"""A real federation (Flower simulation) stops early on federated validation loss and keeps the best round's model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedcrm.coordinator.registry import load_run_model, read_events
from fedcrm.coordinator.registry_db import open_registry, registry_url
from fedcrm.coordinator.registry_index import get_model, get_run, index_run, lineage
from tests.federation import copy_partners, run

pytestmark = pytest.mark.slow


def test_patience_stops_the_run_and_the_final_model_is_the_best_rounds(tmp_path: Path) -> None:
    partners = copy_partners(tmp_path / "partners", names=("A", "B"))
    # min_delta larger than any loss: no round after the first improves, so patience 1 stops after round 2.
    result = run(tmp_path, partners, aggregation="plain", rounds=4, early_stopping_patience=1,
                 early_stopping_min_delta=10.0, batch_size=0, local_epochs=1)
    assert result.succeeded, result.error
    events = read_events(result.run_dir)
    assert [e["round"] for e in events if e["event"] == "evaluate"] == [1, 2]
    stop = next(e for e in events if e["event"] == "early_stop")
    assert stop["round"] == 2 and stop["best_round"] == 1
    chosen = next(e for e in events if e["event"] == "model_selected")
    assert chosen["round"] == 1 and chosen["rule"] == "best"
    final = load_run_model(result.run_dir, "final")
    first, second = load_run_model(result.run_dir, "round-1"), load_run_model(result.run_dir, "round-2")
    assert all(np.array_equal(a, b) for a, b in zip(final[1], first[1], strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(final[1], second[1], strict=True))
    assert final[2]["round"] == 1
    assert "best round 1" in (result.run_dir / "report.md").read_text()

    engine = open_registry(registry_url(None, tmp_path / "runs"))
    index_run(engine, result.run_dir)
    reg = get_run(engine, result.run_id)
    assert (reg["status"], reg["rounds_completed"], reg["stopped_early_after"], reg["final_round"]) == (
        "completed", 2, 2, 1)
    assert get_model(engine, f"{result.run_id}:final")["round"] == 1
    got = lineage(engine, f"{result.run_id}:final")
    assert got["partners"] == ["A", "B"] and [r["round"] for r in got["rounds"]] == [1]
    assert {h["partner"] for h in got["ledger_heads"]} == {"A", "B"}
