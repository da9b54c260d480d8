"""Fixtures of the consent-log tests: a ledger on SQLite and on a real PostgreSQL.

`postgres_server` comes from the `tests.postgres_server` plugin (registered in tests/conftest.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest

from fedcrm.consent.checkpoint import generate_signing_key
from fedcrm.consent.events import ConsentEvent, UsageEvent, subject_fingerprint
from fedcrm.consent.ledger import Ledger

ORIGIN = "fedcrm.test/partner-a/consent"
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def pseudonym(n: int, key_id: str = "0a1b2c3d") -> str:
    """A well-formed pseudonym for subject number n."""
    return f"{key_id}:{n:032x}"


def consent(n: int, action: str = "grant", *, purpose: str = "churn_prediction", key_id: str = "0a1b2c3d", minutes: int = 0) -> ConsentEvent:
    """A consent receipt for subject n."""
    at = T0 + timedelta(minutes=minutes)
    return ConsentEvent(
        receipt_id=f"r-{n}-{action}-{minutes}", subject=pseudonym(n, key_id), purpose=purpose,
        category="user.behavior.service_subscription", action=action, legal_basis="consent",
        effective_at=at, recorded_at=at, source="web-form", notice_version="2025-01",
    )


def usage(subjects: list[str], job: str = "run1") -> UsageEvent:
    """A usage record over the given pseudonyms."""
    return UsageEvent(
        purpose="churn_prediction", partner="partner-a", job_id=job, model_version=f"{job}:1", stage="fit",
        at=T0 + timedelta(days=1), tree_size_read=0, columns=("tenure", "monthly_charges"),
        n_subjects=len(subjects), subject_fingerprint=subject_fingerprint(subjects),
    )


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or a new database on the session's PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    server = request.getfixturevalue("postgres_server")
    name = f"t_{uuid.uuid4().hex}"
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield server.url(name)
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
def signing_key(tmp_path: Path) -> Path:
    """A fresh Ed25519 signing key file."""
    path = tmp_path / "keys" / "ledger.pem"
    generate_signing_key(path)
    return path


@pytest.fixture
def ledger(ledger_url: str, signing_key: Path) -> Iterator[Ledger]:
    """A new, empty ledger on ``ledger_url``."""
    led = Ledger.open(ledger_url, signing_key_path=signing_key, origin=ORIGIN)
    yield led
    led.close()


@pytest.fixture
def make() -> SimpleNamespace:
    """Event factories: ``make.pseudonym(n)``, ``make.consent(n, action)``, ``make.usage(subjects)``."""
    return SimpleNamespace(pseudonym=pseudonym, consent=consent, usage=usage, origin=ORIGIN, t0=T0)
