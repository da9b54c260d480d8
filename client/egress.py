"""The partner's egress journal: a local record of every message that left the partner.

A partner can show its own data-protection officer exactly what it sent to the
coordinator. ``digest`` mode (default) records type, round, size, SHA-256 and the record
and key names of each reply; ``full`` mode also keeps the exact wire bytes (the
serialised RecordDict), which the privacy tests scan for identifiers and raw rows.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

from fedcrm.client.config import load_partner_config

_lock = threading.Lock()


def journal_message(
    config_path: Path, *, message_type: str, group_id: str, wire: bytes, summary: dict[str, Any]
) -> Path | None:
    """Append one outgoing reply to the partner's journal; returns the journal file."""
    config = load_partner_config(config_path)
    mode = config.privacy.egress_journal
    if mode == "off":
        return None
    folder = config.work_path / "egress"
    folder.mkdir(parents=True, exist_ok=True)
    index = folder / "journal.jsonl"
    with _lock:
        seq = sum(1 for _ in index.open()) if index.exists() else 0
        entry: dict[str, Any] = {
            "seq": seq,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "message_type": message_type,
            "round": group_id,
            "bytes": len(wire),
            "sha256": hashlib.sha256(wire).hexdigest(),
            **summary,
        }
        if mode == "full":
            wire_path = folder / f"{seq:05d}-{message_type.replace('.', '_')}-r{group_id}.bin"
            wire_path.write_bytes(wire)
            entry["wire_file"] = wire_path.name
        with index.open("a") as handle:
            handle.write(json.dumps(entry) + "\n")
    return index
