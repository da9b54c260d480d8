"""The round benchmark's reading of the ServerApp's exchange journal."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.rounds import exchange_breakdown


def test_exchanges_are_split_into_push_wait_and_coordinator_work_per_round(tmp_path: Path) -> None:
    journal = tmp_path / "grid.jsonl"
    entries = [  # round 0 (statistics), then round 1: two exchanges with 0.5 s of coordinator work between
        {"group_id": "0", "started": 100.0, "push_s": 1.0, "first_reply_s": 2.0, "last_reply_s": 3.0},
        {"group_id": "1", "started": 104.0, "push_s": 0.5, "first_reply_s": 1.0, "last_reply_s": 2.0},
        {"group_id": "1", "started": 106.5, "push_s": 0.25, "first_reply_s": 0.5, "last_reply_s": 1.5},
    ]
    journal.write_text("".join(json.dumps(e) + "\n" for e in entries))
    [round_1, round_2] = exchange_breakdown(journal, 2)
    assert round_1 == {"exchanges": 2, "push_s": 0.75, "wait_s": 2.75, "between_s": 1.5}
    assert round_2 == {"exchanges": 0, "push_s": 0.0, "wait_s": 0.0, "between_s": 0.0}
    assert exchange_breakdown(tmp_path / "absent.jsonl", 2) == []
