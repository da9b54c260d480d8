"""The fast block check of a full verification, and its worker for a range of the tree.

Standard library only, so a spawned worker process starts in milliseconds. A *plain*
block is a run of consent receipts, each with its one subject payload: the only kind a
million-entry log holds in bulk. :func:`plain_block` checks a plain block in one piece
(SQLite concatenates the block's columns in C; Python splits, hashes in list
comprehensions, compares whole blocks at once and runs the substring tests through
``map``) and returns its leaf hashes, or None for anything else, which the caller checks
entry by entry with the reference's functions (``verify_log``).

:func:`plain_range` is the unit of work of a parallel verification: the leaves
``lo..hi-1`` of a perfect subtree (``lo`` a multiple of the range's power-of-two size,
RFC 9162 §2.1.1), returned as the subtree's frontier at each stop (a signed head's size)
inside it and at its end, so the parent joins them to its own right edge without the
leaves. A range that is not all plain comes back None and the parent checks it itself.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from hashlib import sha256 as _sha
from operator import contains
from typing import Any

__all__ = ["plain_block", "plain_range", "push_node", "extend"]

#: The texts joined by LF + 0x00: after a split at LF every text but the first comes with the leaf prefix 0x00
#: (RFC 9162 §2.1.1), so it is hashed as it comes. Prefixing each row in SQL (x'00' || public_json) copied
#: every text once more and cost a third of the query (0.3 s of CPU at a million entries).
_ENTRIES = ("SELECT count(*), min(idx), max(idx), CAST(group_concat(public_json, x'0a00') AS BLOB), "
            "CAST(group_concat(leaf_hash, '') AS BLOB), sum(kind = 'consent'), count(fingerprint) "
            "FROM log_entries WHERE idx >= ? AND idx < ?")
#: salt || value, as events.salted_hash hashes it, between separators no UTF-8 value can hold (0xff). A salt
#: that held one would only split the block wrongly: then the count or a hash differs and the block goes slow.
_SEPARATOR = b"\n\xff\xfe\xff\xfe\xff\xfe\n"
#: events.SALT_BYTES (standard library only here; tests/consent/test_consent_verify_fast.py checks they agree).
SALT_BYTES = 32
#: Each salt's length is checked too (bundle._check_entry): the leaf commits to salt || value only.
_PAYLOADS = ("SELECT count(*), min(idx), max(idx), sum(field = 'subject'), "
             f"sum(length(CAST(salt AS BLOB)) = {SALT_BYTES}), "  # bytes, also of a salt edited into TEXT
             f"CAST(group_concat(salt || value, x'{_SEPARATOR.hex()}') AS BLOB) "
             "FROM personal_payloads WHERE idx >= ? AND idx < ?")
_KIND_KEY = b'"kind":"'
#: A consent leaf's last key (canonical JSON sorts keys): its salted subject hash, then the closing brace.
_SALTED_KEY = '"subject_salted_sha256":"'
_TAIL = len(_SALTED_KEY) + 64 + 2


def push_node(stack: list[bytes], size: int, node: bytes, height: int) -> int:
    """Push the root of a perfect subtree of 2**height leaves starting at ``size`` (aligned); the new size.

    ``stack`` is ``merkle.TreeFrontier``'s: the roots of the perfect subtrees given by the set bits of size.
    """
    s = size >> height
    while s & 1:
        node = _sha(b"\x01" + stack.pop() + node).digest()
        s >>= 1
    stack.append(node)
    return size + (1 << height)


def extend(stack: list[bytes], size: int, leaves: Sequence[bytes]) -> int:
    """Append leaf hashes as the largest aligned perfect subtrees, each hashed level by level."""
    pos, n = 0, len(leaves)
    while pos < n:
        height = (n - pos).bit_length() - 1
        if size:
            height = min(height, (size & -size).bit_length() - 1)
        level = leaves[pos : pos + (1 << height)]
        while len(level) > 1:
            level = [_sha(b"\x01" + a + b).digest() for a, b in zip(level[0::2], level[1::2])]
        size = push_node(stack, size, level[0], height)
        pos += 1 << height
    return size


def plain_block(dbapi: Any, lo: int, hi: int, keep: list[tuple[int, str, str]] | None = None) -> list[bytes] | None:
    """Leaf hashes of entries lo..hi-1 if they are plain consent receipts passing every check; else None.

    Each test is at least as strict as ``bundle._check_entry`` and ``LogFacts._note`` on a consent leaf.
    With ``keep``, a block that passes also appends ``(index, text, subject)`` for each entry, as
    ``LogFacts`` keeps them for the gate (``keep_consents``).
    """
    n = hi - lo
    count, first, last, texts, stored, consents, fingerprints = dbapi.execute(_ENTRIES, (lo, hi)).fetchone()
    if count != n or first != lo or last != hi - 1 or consents != n or fingerprints or texts is None:
        return None
    pcount, pfirst, plast, subjects, salts, salted = dbapi.execute(_PAYLOADS, (lo, hi)).fetchone()
    # (idx, field) is the key: n 'subject' rows between lo and hi-1 are exactly one per entry.
    if pcount != n or pfirst != lo or plast != hi - 1 or subjects != n or salts != n or salted is None:
        return None
    lines = texts.split(b"\n")  # n lines: no text holds a raw LF
    if len(lines) != n or b"\r" in texts:
        return None
    lines[0] = b"\x00" + lines[0]
    leaves = [_sha(t).digest() for t in lines]  # merkle.hash_leaf, inlined (the 0x00 came with the text)
    if b"".join(leaves) != stored:
        return None
    # Each line holds '"index":<its index>,"kind":"consent"' and the block n '"kind":"' in all (none spans
    # a line break): so that is each line's only, hence first, '"kind":"', the one leaf_kind reads.
    if texts.count(_KIND_KEY) != n:
        return None
    if not all(map(contains, lines, [b'"index":%d,"kind":"consent"' % i for i in range(lo, hi)])):
        return None
    pairs = salted.split(_SEPARATOR)
    if len(pairs) != n:
        return None
    hexes = [_sha(x).hexdigest() for x in pairs]  # events.salted_hash, inlined
    # Every line ends '"subject_salted_sha256":"<its payload's hash>"}': all n compared at once.
    if b"".join([t[-_TAIL:] for t in lines]) != (_SALTED_KEY + ('"}' + _SALTED_KEY).join(hexes) + '"}').encode():
        return None
    if keep is not None:
        try:  # each salt is SALT_BYTES long (checked above), so the value is what follows it
            texts_of = [t[1:].decode() for t in lines]
            subjects_of = [x[SALT_BYTES:].decode() for x in pairs]
        except UnicodeDecodeError:
            return None
        keep.extend(zip(range(lo, hi), texts_of, subjects_of))
    return leaves


def plain_range(path: str, lo: int, hi: int, stops: Sequence[int], block: int) -> dict[int, list[bytes]] | None:
    """The frontier of leaves lo..s-1 (relative to lo) at each stop s in ``stops`` and at ``hi``; None if not all plain.

    Opens its own read-only connection: run in a worker process by ``verify_log``.
    """
    dbapi = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        stack: list[bytes] = []
        out: dict[int, list[bytes]] = {}
        size, todo = 0, sorted(s for s in stops if lo < s < hi)
        for start in range(lo, hi, block):
            end = min(start + block, hi)
            leaves = plain_block(dbapi, start, end)
            if leaves is None:
                return None
            while todo and todo[0] <= end:
                size = extend(stack, size, leaves[lo + size - start : todo[0] - start])
                out[todo.pop(0)] = list(stack)
            size = extend(stack, size, leaves[lo + size - start :])
        out[hi] = stack
        return out
    finally:
        dbapi.close()
