"""Full verification of a stored SQLite log in blocks: the same checks as ``bundle.check_log``, fused.

:func:`check_log` (the reference) walks one Python object per entry; at a million
entries that costs several times the hashing itself. :func:`verify_sqlite` checks the
same things a block of :data:`BLOCK` entries at a time:

* SQLite concatenates a block's entry texts, stored leaf hashes, salts and payload
  values in C (one ``group_concat`` row per table per block, on the ledger's own DBAPI
  connection, so inside the verifying transaction's snapshot);
* Python splits them with ``bytes.split``, hashes every leaf and every salted payload
  in list comprehensions (``hashlib`` inlined, no call per check), compares whole
  blocks at once (the joined leaf hashes against the stored ones, the joined salted
  hashes against those the texts carry) and runs the per-text substring tests through
  ``map`` (C loops): the first ``"kind":"`` is ``"kind":"consent"``, preceded by the
  entry's own ``"index":N,``; no raw CR/LF;
* the tree takes each block as aligned perfect subtrees, hashed level by level
  (RFC 9162 §2.1.1; the frontier stack is ``merkle.TreeFrontier``'s), and every stored
  signed head is checked where the tree reaches its size, as ``check_log`` does.

A block that is not a plain run of consent receipts with their payloads (a usage,
rotation or erasure record, an erased payload, anything odd) is checked entry by
entry with the reference's own functions (``bundle._check_entry``,
``LogFacts._note``). The fast block checks are each at least as strict as the
reference's, so the fast path only ever reports *ok* on a log the reference passes;
on the first disagreement it returns ``None`` and the caller runs the reference,
whose report (failure class, first bad index, message) is the verdict. The
derived-table checks run on the same :class:`~fedcrm.consent.integrity.LogFacts` the
reference would have gathered.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
import threading
from multiprocessing import get_all_start_methods, get_context
from typing import Any

from sqlalchemy import Connection

from fedcrm.consent import checkpoint as cp
from fedcrm.consent.bundle import HeadRow, LeafRow, VerificationReport, _Bad, _check_entry
from fedcrm.consent.integrity import LogFacts, Problem
from fedcrm.consent.merkle import TreeFrontier, consistency_proof, subtree_hasher, verify_consistency
from fedcrm.consent.verify_blocks import extend, plain_block, plain_range, push_node
from fedcrm.errors import MerkleProofError

__all__ = ["BLOCK", "verify_sqlite"]

#: Entries per block: a power of two, so a block without a head inside is one perfect subtree.
BLOCK = 4096


class _Fallback(Exception):
    """Something the fast path does not vouch for: the reference decides."""


def _rows(dbapi: Any, lo: int, hi: int) -> list[LeafRow]:
    """Entries lo..hi-1 with their payloads, as the reference reads them (``db._sqlite_rows``)."""
    pays: dict[int, dict[str, tuple[bytes, str]]] = {}
    for idx, name, salt, value in dbapi.execute(
        "SELECT idx, field, CAST(salt AS BLOB), value FROM personal_payloads WHERE idx >= ? AND idx < ? ORDER BY idx, field", (lo, hi)
    ):
        pays.setdefault(idx, {})[name] = (salt, value)
    entries = dbapi.execute("SELECT idx, public_json, leaf_hash, kind, fingerprint FROM log_entries "
                            "WHERE idx >= ? AND idx < ? ORDER BY idx", (lo, hi))
    return [LeafRow(idx, text, leaf, pays.get(idx, {}), kind, fp) for idx, text, leaf, kind, fp in entries]


def _slow_block(dbapi: Any, lo: int, hi: int, facts: LogFacts) -> list[bytes]:
    """Leaf hashes of entries lo..hi-1 checked one by one with the reference's functions."""
    rows = _rows(dbapi, lo, hi)
    if len(rows) != hi - lo:
        raise _Fallback
    leaves = []
    for expected, row in enumerate(rows, lo):
        try:
            leaves.append(_check_entry(row, expected))
        except _Bad:
            raise _Fallback from None
        facts._note(row)
    if facts.kind_bad or facts.fingerprint_bad:
        raise _Fallback
    return leaves


def _ranges(n: int, workers: int, block: int) -> list[tuple[int, int]]:
    """Aligned power-of-two ranges (perfect subtrees) covering 0..n-1, about four per worker; one range if serial."""
    if workers <= 1 or n < 4 * block:
        return [(0, n)]
    span = max(block, 1 << max(0, (n // (4 * workers)).bit_length() - 1))
    return [(lo, min(lo + span, n)) for lo in range(0, n, span)]


def _context() -> Any:
    """Fork where this process runs no other thread (no start-up cost); else spawn (safe with threads).

    A spawned worker re-imports the parent's ``__main__`` (the whole CLI): seconds of CPU per worker.
    """
    return get_context("fork" if threading.active_count() == 1 and "fork" in get_all_start_methods() else "spawn")


def _database_file(dbapi: Any) -> str | None:
    for _, name, path in dbapi.execute("PRAGMA database_list"):
        if name == "main":
            return path or None
    return None


def verify_sqlite(
    conn: Connection,
    heads: Sequence[HeadRow],
    newest: cp.Checkpoint,
    facts: LogFacts,
    *,
    trusted: cp.Checkpoint | None = None,
    head_check: Callable[[HeadRow], str | None] | None = None,
    after: Callable[[], Problem | None] | None = None,
    block: int | None = None,
    workers: int = 1,
) -> VerificationReport | None:
    """``check_log``'s report on a SQLite ledger, or None where the reference must decide.

    ``heads`` are every stored head ordered by size; ``facts`` collects what ``after``
    (the derived-table checks, run once the tree verified) reads, as with ``check_log``.
    Returns the same :class:`VerificationReport` ``check_log`` gives when the tree
    verifies (ok, or the derived-table problem ``after`` names); None on any other
    disagreement, which the caller hands to ``check_log`` for its verdict.

    ``workers`` > 1 checks aligned power-of-two ranges of plain blocks in that many
    processes (each with its own read-only connection); this process joins their
    subtree roots and frontiers in order, checks every head, and checks itself any range
    that is not all plain. A worker reads the database's latest commit rather than this
    transaction's snapshot: the ledger only appends above the verified size, and any
    disagreement (an erasure committed meanwhile) sends the verdict to the reference,
    which reads the snapshot. With ``trusted`` the leaves are kept for the consistency
    proof, so the check stays in this process.
    """
    block = BLOCK if block is None else block
    dbapi = conn.connection.driver_connection
    if dbapi.execute("PRAGMA encoding").fetchone()[0] != "UTF-8":
        return None  # the blocks are read as stored bytes: the reference hashes UTF-8
    n = newest.size
    beyond = dbapi.execute("SELECT 1 FROM log_entries WHERE idx < 0 OR idx >= ? LIMIT 1", (n,)).fetchone()
    if beyond is not None or block & (block - 1) or (trusted is not None and trusted.size > n):
        return None
    stops = sorted({h.size for h in heads if 0 <= h.size <= n} | ({trusted.size} if trusted and trusted.size else set()))
    by_size = {h.size: h for h in heads}
    keep: list[bytes] | None = [] if trusted is not None else None
    path = _database_file(dbapi)
    # Workers return frontiers only: the leaves kept for a consistency proof and the consents kept for the
    # gate (``facts.keep_consents``) stay in this process.
    ranges = _ranges(n, workers if keep is None and path and not facts.keep_consents else 1, block)
    stack: list[bytes] = []
    size, stop_at = 0, 0

    def at_stop(nodes: list[bytes]) -> None:
        frontier = TreeFrontier(size, nodes)
        head = by_size.get(size)
        if head is not None:
            if head_check is not None and head_check(head):
                raise _Fallback
            if frontier.root() != head.root_hash or (head.frontier is not None and head.frontier != frontier.to_bytes()):
                raise _Fallback
        if trusted is not None and size == trusted.size and frontier.root() != trusted.root_hash:
            raise _Fallback

    def serial(lo: int, hi: int) -> None:
        """Blocks lo..hi-1 in this process: plain ones in one piece, the others entry by entry."""
        nonlocal size, stop_at
        for start in range(lo, hi, block):
            end = min(start + block, hi)
            leaves = plain_block(dbapi, start, end, facts.consents if facts.keep_consents else None)
            if leaves is None:
                leaves = _slow_block(dbapi, start, end, facts)
            if keep is not None:
                keep.extend(leaves)
            while stop_at < len(stops) and stops[stop_at] <= end:
                size = extend(stack, size, leaves[size - start : stops[stop_at] - start])
                at_stop(stack)
                stop_at += 1
            size = extend(stack, size, leaves[size - start :])

    def joined(lo: int, hi: int, frontiers: dict[int, list[bytes]]) -> None:
        """A worker's range: its frontier at each stop, after this process's right edge; then its end."""
        nonlocal size, stop_at
        while stop_at < len(stops) and stops[stop_at] < hi:
            size = stops[stop_at]
            at_stop(stack + frontiers[size])
            stop_at += 1
        size = lo
        heights = [h for h in range((hi - lo).bit_length() - 1, -1, -1) if (hi - lo) >> h & 1]
        for node, height in zip(frontiers[hi], heights, strict=True):
            size = push_node(stack, size, node, height)
        if stop_at < len(stops) and stops[stop_at] == hi:
            at_stop(stack)
            stop_at += 1

    pool = ProcessPoolExecutor(min(workers, len(ranges)), mp_context=_context()) if len(ranges) > 1 else None
    try:
        if stops and stops[0] == 0:
            at_stop(stack)
            stop_at = 1
        futures: list[Future[Any] | None] = [None] * len(ranges)
        if pool is not None:
            futures = [pool.submit(plain_range, path, lo, hi, [s for s in stops if lo < s < hi], block) for lo, hi in ranges]
        for (lo, hi), future in zip(ranges, futures, strict=True):
            try:
                frontiers = future.result() if future is not None else None
            except Exception:  # noqa: BLE001 (a worker that failed, e.g. a busy database, leaves its range to us)
                frontiers = None
            if frontiers is None:
                serial(lo, hi)
            else:
                joined(lo, hi, frontiers)
        if TreeFrontier(size, stack).root() != newest.root_hash:
            raise _Fallback
        if trusted is not None:
            assert keep is not None
            proof = consistency_proof(trusted.size, n, subtree_hasher(keep))
            try:
                verify_consistency(trusted.size, n, trusted.root_hash, newest.root_hash, proof)
            except MerkleProofError:
                raise _Fallback from None
    except _Fallback:
        return None
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    trusted_size = trusted.size if trusted else None
    problem = after() if after is not None else None
    if problem is not None:
        failure, index, message = problem
        return VerificationReport(ok=False, checked_size=n, message=message, first_bad_index=index, failure=failure,
                                  head_size=n, trusted_size=trusted_size)
    note = f"; consistent with the trusted head of size {trusted.size}" if trusted else ""
    return VerificationReport(ok=True, checked_size=n, message=f"{n} entries match the signed head of size {n}{note}",
                              head_size=n, trusted_size=trusted_size)
