"""Who each usage record included, stored in sorted chunks of pseudonyms (``subject_set_chunks``).

A usage record's leaf commits to its subject set by fingerprint
(``events.subject_fingerprint``: SHA-256 over the sorted pseudonyms joined by newlines).
The set itself is erasable personal data kept outside the tree, stored once per
fingerprint, so that a subject request can answer "which runs used me".

It is stored as chunks of up to :data:`CHUNK_SIZE` sorted pseudonyms, each row one newline-joined
UTF-8 chunk with its first and last member as byte strings (bytewise order is the order
``sorted`` gives, on SQLite and on PostgreSQL's ``bytea`` alike). Chunk by chunk, the rows
concatenated with newlines are the exact bytes the fingerprint hashes, so checking a set
is one pass of SHA-256 over its chunks, and writing a million-member set is a few hundred
rows instead of a million (measured at 1M members: 8.4 s as a row per member, see
``docs/scale.md``). A member is found through the ``(last, first)`` index: the chunks whose
range covers it, then a binary search inside the chunk.

Hand-written because no library stores a sorted, hashed, erasable set in SQL; the
structure is the one SSTables and Parquet row groups use (sorted runs with min/max keys).
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import Connection, delete, insert, select, update

from fedcrm.consent.db import SubjectSetChunk

__all__ = ["CHUNK_SIZE", "SetDigest", "digests", "fingerprints_including", "is_stored", "remaining", "remove_members", "store"]

CHUNK_SIZE = 4096  #: pseudonyms per stored chunk (~300 KB rows at 73-byte pseudonyms); an erasure rewrites one per set
_T = SubjectSetChunk.__table__
_INSERT_ROWS = 32  # chunks per INSERT statement (~10 MB of parameters)


def _chunks_of_array(values: pa.Array) -> Iterator[tuple[bytes, bytes, int, bytes]]:
    """(first, last, size, joined) per chunk of sorted distinct pseudonyms, sliced from Arrow's buffers."""
    if len(values) == 0:
        return
    if values.type != pa.large_string():
        values = values.cast(pa.large_string())
    lines = pc.binary_join_element_wise(values, pa.scalar("", pa.large_string()), pa.scalar("\n", pa.large_string()))
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64)[lines.offset : lines.offset + len(lines) + 1]
    data = memoryview(lines.buffers()[2])
    for lo in range(0, len(values), CHUNK_SIZE):
        hi = min(lo + CHUNK_SIZE, len(values))
        first = bytes(data[offsets[lo] : offsets[lo + 1] - 1])
        last = bytes(data[offsets[hi - 1] : offsets[hi] - 1])
        yield first, last, hi - lo, bytes(data[offsets[lo] : offsets[hi] - 1])


def _chunks_of_strings(members: list[str]) -> Iterator[tuple[bytes, bytes, int, bytes]]:
    for lo in range(0, len(members), CHUNK_SIZE):
        part = [m.encode() for m in members[lo : lo + CHUNK_SIZE]]
        yield part[0], part[-1], len(part), b"\n".join(part)


def is_stored(conn: Connection, fingerprint: str) -> bool:
    """Whether a subject set is stored under ``fingerprint``."""
    return conn.execute(select(_T.c.fingerprint).where(_T.c.fingerprint == fingerprint).limit(1)).first() is not None


def store(conn: Connection, fingerprint: str, subjects: pa.Array | Iterable[str]) -> bool:
    """Store a usage record's subject set under its fingerprint unless it is stored; True if written.

    An Arrow array must already hold distinct pseudonyms in sorted order (the gate's covered
    set); any other iterable is deduplicated and sorted here. The caller's transaction commits.
    """
    if is_stored(conn, fingerprint):
        return False
    chunks = _chunks_of_array(subjects) if isinstance(subjects, pa.Array) else _chunks_of_strings(sorted(set(subjects)))
    batch: list[dict[str, object]] = []
    for n, (first, last, size, joined) in enumerate(chunks):
        batch.append({"fingerprint": fingerprint, "chunk": n, "first": first, "last": last, "size": size, "members": joined})
        if len(batch) == _INSERT_ROWS:
            conn.execute(insert(_T), batch)
            batch = []
    if batch:
        conn.execute(insert(_T), batch)
    return True


def _chunks_covering(conn: Connection, member: bytes) -> list[tuple[str, int, bytes]]:
    q = select(_T.c.fingerprint, _T.c.chunk, _T.c.members).where((_T.c.last >= member) & (_T.c.first <= member))
    return [(fp, n, bytes(joined)) for fp, n, joined in conn.execute(q)]


def _index_in(joined: bytes, member: bytes) -> int | None:
    """Position of ``member`` in a stored chunk (sorted), or None."""
    items = joined.split(b"\n")
    at = bisect.bisect_left(items, member)
    return at if at < len(items) and items[at] == member else None


def fingerprints_including(conn: Connection, subjects: Iterable[str]) -> set[str]:
    """Fingerprints of the stored subject sets holding any of ``subjects``."""
    found: set[str] = set()
    for subject in subjects:
        member = subject.encode()
        found.update(fp for fp, _, joined in _chunks_covering(conn, member) if _index_in(joined, member) is not None)
    return found


def remove_members(conn: Connection, subjects: Iterable[str]) -> set[str]:
    """Delete ``subjects`` from every stored subject set (erasure); the fingerprints of the sets changed."""
    changed: set[str] = set()
    for subject in subjects:
        member = subject.encode()
        for fp, n, joined in _chunks_covering(conn, member):
            items = joined.split(b"\n")
            at = bisect.bisect_left(items, member)
            if at == len(items) or items[at] != member:
                continue
            del items[at]
            where = (_T.c.fingerprint == fp) & (_T.c.chunk == n)
            if items:
                conn.execute(update(_T).where(where).values(
                    first=items[0], last=items[-1], size=len(items), members=b"\n".join(items)))
            else:
                conn.execute(delete(_T).where(where))
            changed.add(fp)
    return changed


@dataclass(frozen=True)
class SetDigest:
    """What the stored chunks of one fingerprint hash to, or the first way they are malformed."""

    fingerprint: str
    digest: str  #: ``events.subject_fingerprint`` of the stored members
    size: int
    malformed: str | None = None  #: a chunk whose bounds, size or order disagree with its members


def _malformed(n: int, first: bytes, last: bytes, size: int, joined: bytes, previous_last: bytes | None) -> str | None:
    if not joined:
        return f"chunk {n} is empty"
    head, _, _ = joined.partition(b"\n")
    _, _, tail = joined.rpartition(b"\n")
    if head != first or tail != last:
        return f"chunk {n}'s first/last columns do not match its members (lookups would miss them)"
    if joined.count(b"\n") + 1 != size:
        return f"chunk {n}'s size column does not match its members"
    if previous_last is not None and first <= previous_last:
        return f"chunk {n} overlaps or precedes the chunk before it"
    return None


def digests(conn: Connection, fingerprint: str | None = None) -> Iterator[SetDigest]:
    """Per stored fingerprint (in order), the fingerprint of its members as stored, one SHA-256 pass."""
    q = select(_T.c.fingerprint, _T.c.chunk, _T.c.first, _T.c.last, _T.c.size, _T.c.members)
    if fingerprint is not None:
        q = q.where(_T.c.fingerprint == fingerprint)
    current: str | None = None
    digest, count, previous, malformed = hashlib.sha256(), 0, None, None
    for fp, n, first, last, size, joined in conn.execute(q.order_by(_T.c.fingerprint, _T.c.chunk)
                                                        .execution_options(yield_per=64)):
        first, last, joined = bytes(first), bytes(last), bytes(joined)
        if fp != current:
            if current is not None:
                yield SetDigest(current, digest.hexdigest(), count, malformed)
            current, digest, count, previous, malformed = fp, hashlib.sha256(), 0, None, None
        if malformed is None:
            malformed = _malformed(n, first, last, size, joined, previous)
        digest.update((b"\n" if count else b"") + joined)
        count += joined.count(b"\n") + 1 if joined else 0
        previous = last
    if current is not None:
        yield SetDigest(current, digest.hexdigest(), count, malformed)


def remaining(conn: Connection, fingerprint: str) -> tuple[str, int]:
    """The subject fingerprint and size of what is stored under ``fingerprint`` (after an erasure)."""
    for found in digests(conn, fingerprint):
        return found.digest, found.size
    return hashlib.sha256(b"").hexdigest(), 0
