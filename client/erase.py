"""Erase one customer on the partner side: the ledger's logged erasure, then the ingested tables.

``fedcrm client erase --config P --customer-id RAW`` pseudonymises the raw id with the
partner key, calls :meth:`fedcrm.consent.ledger.Ledger.erase_subject` (one transaction:
payloads, subject-set rows and rotation rows removed, an erasure event with the
subject's suppression hashes appended), then rewrites every ingested table of the work
dir (customers, id map, transactions) without the customer, each through a 0600
temporary file and ``os.replace`` (atomic per file), and deletes the memory-mapped round
table (``.customers.arrow``, rebuilt from the purged table by the next round).

Last, the partner's in-process caches (consented views, encoded training rows, the gate's
memo of subject columns; ``client/partner_session.py``) are dropped, so a long-lived partner
process (the SuperNode's ClientApp worker) cannot train on the customer from rows it encoded
before the erasure. (Another process's caches are keyed by the table's mtime and size, which
the purge changes, and its gate refuses the suppressed pseudonyms whatever it holds.)

Order matters: the ledger goes first. From its commit on, the gate refuses the
customer's pseudonyms in every later run whatever the tables hold, so a crash between
the two steps (or a later re-ingest of an export that still lists the customer) cannot
bring them back; running the command again finishes the purge.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fedcrm.client.config import PartnerConfig
from fedcrm.client.ingest import CUSTOMERS_FILE, ID_MAP_FILE, ROUND_TABLE_FILE, create_private
from fedcrm.client.pseudonymise import load_key, pseudonymise
from fedcrm.client.transaction_ingest import TRANSACTIONS_FILE
from fedcrm.consent.erasure import ErasureResult
from fedcrm.consent.gate import SUBJECT
from fedcrm.consent.ledger import Ledger

__all__ = ["ClientErasure", "erase_customer", "purge_tables"]

TABLES = (CUSTOMERS_FILE, ID_MAP_FILE, TRANSACTIONS_FILE)


@dataclass(frozen=True)
class ClientErasure:
    """What ``client erase`` did: the ledger's part and the rows removed per table."""

    pseudonym: str
    ledger: ErasureResult
    rows_removed: dict[str, int]


def purge_tables(work_dir: Path, pseudonyms: set[str]) -> dict[str, int]:
    """Rewrite each ingested table in ``work_dir`` without rows of these pseudonyms; rows removed per file."""
    removed: dict[str, int] = {}
    for name in TABLES:
        path = work_dir / name
        if not path.exists():
            continue
        frame = pd.read_parquet(path)
        drop = frame[SUBJECT].astype(str).isin(pseudonyms) if SUBJECT in frame.columns else None
        if drop is None or not drop.any():
            removed[name] = 0
            continue
        tmp = path.with_name(f".{name}.erase.tmp")
        try:
            create_private(tmp)
            frame.loc[~drop].reset_index(drop=True).to_parquet(tmp, index=False)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        removed[name] = int(drop.sum())
    return removed


def erase_customer(config: PartnerConfig, customer_id: str, *, request_id: str) -> ClientErasure:
    """Erase a customer given by raw id: logged in the ledger first, then purged from the ingested tables."""
    key = load_key(config.key_path)
    subject = pseudonymise(customer_id, key)
    with Ledger.open(config.ledger_url, signing_key_path=config.ledger_key_path) as ledger:
        aliases = set(ledger.resolve(subject))
        result = ledger.erase_subject(subject, request_id=request_id)
    removed = purge_tables(config.work_path, aliases)
    # The memory-mapped round table still holds the customer: gone now, rebuilt from the purged table next round.
    (config.work_path / ROUND_TABLE_FILE).unlink(missing_ok=True)
    from fedcrm.client.partner_session import forget_partner  # noqa: PLC0415 (the round caches are partner_session's)

    forget_partner(config)
    return ClientErasure(subject, result, removed)
