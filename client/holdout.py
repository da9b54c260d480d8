"""The local hold-out: a stable fraction of a partner's customers, chosen by pseudonym hash.

A customer's bucket is the first 32 bits of SHA-256(pseudonym) as an unsigned integer;
the customer is in the hold-out when ``bucket / 0xFFFFFFFF < validation_fraction``, so the
same customers are held out every round and in every process. Ingestion stores the bucket
next to the pseudonym (``HOLDOUT_BUCKET``) so a round never hashes a million pseudonyms
again; tables ingested before the column existed are bucketed here on read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

#: Column of the ingested customer table holding each row's hold-out bucket (uint32).
HOLDOUT_BUCKET = "holdout_bucket"
_SCALE = 0xFFFFFFFF


def bucket_of(subject: str) -> int:
    """The hold-out bucket of one pseudonym."""
    return int.from_bytes(hashlib.sha256(subject.encode()).digest()[:4], "big")


def buckets(subjects: Iterable[str]) -> np.ndarray:
    """Hold-out buckets of many pseudonyms (uint32), in order."""
    sha = hashlib.sha256
    return np.fromiter((int.from_bytes(sha(s.encode()).digest()[:4], "big") for s in subjects), dtype=np.uint32)


def in_holdout(bucket: np.ndarray, fraction: float) -> np.ndarray:
    """Boolean mask of the rows whose bucket falls in the hold-out (same rule as ``is_validation_subject``)."""
    return np.asarray(bucket, dtype=np.float64) / _SCALE < fraction


def is_validation_subject(subject: str, fraction: float) -> bool:
    """Stable local hold-out membership from the pseudonym (same customers every round)."""
    return bucket_of(subject) / _SCALE < fraction
