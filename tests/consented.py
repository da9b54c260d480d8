"""A real consent gate for tests that need a ConsentedView (no shortcut exists, by design)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from fedcrm.consent.checkpoint import generate_signing_key
from fedcrm.consent.gate import ConsentedView, UsageContext, gate
from fedcrm.consent.ledger import Ledger


def consented_view(frame: pd.DataFrame, tmp_path: Path, categories: dict[str, str],
                   purpose: str = "customer_segmentation") -> ConsentedView:
    """Pass ``frame`` (with a ``subject`` column) through the gate of a fresh partner ledger."""
    key = tmp_path / "ledger.key"
    if not key.exists():
        generate_signing_key(key)
    ledger = Ledger.open(f"sqlite:///{tmp_path / 'consent.db'}", signing_key_path=key, origin="fedcrm/test")
    try:
        return gate(frame, categories, purpose, datetime.now(UTC), list(categories), ledger=ledger,
                    use=UsageContext(job_id="test", partner="test", model_version="", stage="analytics"))
    finally:
        ledger.close()
