"""Key loss and key rotation: the partner key may change only in a way the ledger records.

Every consent receipt names its subject by a pseudonym made with the partner key. A new
key on an existing ledger would orphan all of them (objections included), so:

* :func:`refuse_new_key_on_used_ledger` stops ``fedcrm client init`` from making a key
  when the ledger already holds entries: restore the key from backup instead;
* :func:`rotate_key` (``fedcrm client rotate-key``) makes the new key, logs the old ->
  new mapping of every ingested customer in the ledger (a ``key_rotation`` entry with
  the mapping's fingerprint, the mapping itself partner-local), keeps the old key as
  ``<key>.retired-<id>`` and drops the ingested tables so they are rebuilt under the new
  key; receipts recorded under the old pseudonyms keep applying to the new ones;
* :func:`orphaned_receipts` counts receipts whose subject no logged rotation maps to the
  current key (``fedcrm client status`` reports them as a failure).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from fedcrm.client.config import PartnerConfig
from fedcrm.client.erase import TABLES
from fedcrm.client.ingest import ROUND_TABLE_FILE, create_private, load_customers, load_id_map
from fedcrm.client.pseudonymise import create_key, key_id, load_key, pseudonymise
from fedcrm.consent import checkpoint as cp
from fedcrm.consent.events import pseudonym_key_id
from fedcrm.consent.ledger import Ledger
from fedcrm.errors import LedgerNotFound, MissingPartnerKey

__all__ = ["RotationResult", "orphaned_receipts", "refuse_new_key_on_used_ledger", "rotate_key"]


def orphaned_receipts(ledger: Ledger, current_key_id: str) -> Counter[str]:
    """Receipts per key id whose subject (after following logged rotations) is not under the current key."""
    events = ledger.consent_events(upto_size=ledger.tree_size())
    return Counter(k for _, e in events if (k := pseudonym_key_id(e.subject)) != current_key_id)


def refuse_new_key_on_used_ledger(config: PartnerConfig) -> None:
    """Raise :class:`MissingPartnerKey` if the key is missing but the ledger already holds entries."""
    if config.key_path.exists():
        return
    try:
        ledger = Ledger.open(config.ledger_url)
    except LedgerNotFound:
        return
    with ledger:
        size = ledger.tree_size()
        if size == 0:
            return
        ids = sorted(orphaned_receipts(ledger, ""))
    raise MissingPartnerKey(
        f"{config.key_path}: the partner key is missing, but the consent ledger {config.ledger_url} already holds "
        f"{size} entries (receipts under key id(s) {', '.join(ids) or 'none'}). A new key would orphan every one of "
        "them, objections included. Restore the key file from your backup (mode 0600). To change keys on purpose, "
        f"keep the old key and run `fedcrm client rotate-key --config {config.config_path or '<partner.toml>'}`."
    )


@dataclass(frozen=True)
class RotationResult:
    """What a rotation did."""

    old_key_id: str
    new_key_id: str
    mapped: int
    orphaned: Counter[str]
    retired_key: Path
    checkpoint: cp.Checkpoint | None


def _write_private(path: Path, data: bytes) -> None:
    create_private(path)
    with path.open("wb") as handle:
        handle.write(data)


def rotate_key(config: PartnerConfig) -> RotationResult:
    """Rotate the partner key, logging the old -> new mapping of every ingested customer (resumable)."""
    old = load_key(config.key_path)
    old_id = key_id(old)
    load_customers(config)  # the id map must be current, and made with the old key
    ids = load_id_map(config)
    pending = config.key_path.with_name(config.key_path.name + ".new")
    if not pending.exists():
        create_key(pending)
    new = load_key(pending)
    new_id = key_id(new)
    mapping = {str(s): pseudonymise(str(raw), new) for s, raw in zip(ids["subject"], ids["customer_id"], strict=True)}
    head = None
    with Ledger.open(config.ledger_url, signing_key_path=config.ledger_key_path) as ledger:
        logged = any(
            s.event.old_key_id == old_id and s.event.new_key_id == new_id for s in ledger.events_of_kind("key_rotation")
        )
        if not logged:  # a rerun after a crash below finds it logged and only finishes the swap
            head = ledger.record_key_rotation(mapping, old_id, new_id)
        retired = config.key_path.with_name(f"{config.key_path.name}.retired-{old_id}")
        if not retired.exists():
            _write_private(retired, config.key_path.read_bytes())
        os.replace(pending, config.key_path)  # atomic: the key file is always one whole key
        orphaned = orphaned_receipts(ledger, new_id)
    for name in (*TABLES, ROUND_TABLE_FILE):
        (config.work_path / name).unlink(missing_ok=True)  # rebuilt under the new key on next use
    return RotationResult(old_id, new_id, len(mapping), orphaned, retired, head)
