"""RFC 6962 / RFC 9162 Merkle tree: hashing, roots, inclusion and consistency proofs.

Follows RFC 9162 §2.1 literally, in small pure functions, the way sigstore-python's
``sigstore/_internal/merkle.py`` does: the 0x00 / 0x01 domain-separation prefixes are
named constants, each function names the section it implements, and one exception
(:class:`fedcrm.errors.MerkleProofError`) reports a proof that does not verify.

Hand-written because no maintained Python library generates *and* verifies both
proof kinds over a caller-provided leaf store (pymerkle keeps its own storage; we
use it only as an independent cross-check in the tests). Hashing is hashlib SHA-256.

Proof *generation* takes a ``subtree(lo, hi) -> bytes`` callback returning
MTH(D[lo:hi]), so the ledger can serve it from stored leaf hashes without copying
slices; :func:`subtree_hasher` builds one over an in-memory list.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

from fedcrm.errors import MerkleProofError

__all__ = [
    "HASH_SIZE",
    "LEAF_PREFIX",
    "NODE_PREFIX",
    "TreeFrontier",
    "cached_subtree",
    "consistency_proof",
    "empty_root",
    "hash_children",
    "hash_leaf",
    "inclusion_proof",
    "root_from_inclusion_proof",
    "root_of",
    "subtree_hasher",
    "verify_consistency",
    "verify_inclusion",
]

#: RFC 9162 §2.1.1: leaf hashes are SHA-256(0x00 || data) ...
LEAF_PREFIX = b"\x00"
#: ... and interior nodes SHA-256(0x01 || left || right): second-preimage resistance.
NODE_PREFIX = b"\x01"
HASH_SIZE = 32

Subtree = Callable[[int, int], bytes]


def hash_leaf(data: bytes) -> bytes:
    """MTH({d}) = SHA-256(0x00 || d) (RFC 9162 §2.1.1)."""
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def hash_children(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right), an interior node (RFC 9162 §2.1.1)."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def empty_root() -> bytes:
    """MTH({}) = SHA-256() of the empty string (RFC 9162 §2.1.1)."""
    return hashlib.sha256(b"").digest()


def _split(n: int) -> int:
    """The largest power of two k with k < n <= 2k (RFC 9162 §2.1.1); n >= 2."""
    return 1 << ((n - 1).bit_length() - 1)


class TreeFrontier:
    """The right edge of a growing tree: one hash per complete subtree (a compact range).

    ``push`` is amortised O(1) and ``root`` O(log n), so a root over n leaves costs
    O(n) time and O(log n) memory; no recursion, no slicing. The stack holds the
    roots of the perfect subtrees given by the set bits of ``size``, largest first;
    RFC 9162's left-balanced MTH equals folding them from the right.
    """

    __slots__ = ("_stack", "size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if len(hashes) != bin(size).count("1"):
            raise ValueError(f"a frontier of size {size} needs {bin(size).count('1')} hashes, got {len(hashes)}")
        self.size = size
        self._stack: list[bytes] = list(hashes)

    def push(self, leaf_hash: bytes) -> None:
        """Append one leaf hash, merging completed subtrees."""
        node = leaf_hash
        s = self.size
        if s & 1:
            # hash_children inlined: a full verification pushes a million leaves.
            stack, sha256, prefix = self._stack, hashlib.sha256, NODE_PREFIX
            while s & 1:
                node = sha256(prefix + stack.pop() + node).digest()
                s >>= 1
        self._stack.append(node)
        self.size += 1

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Append many leaf hashes in order."""
        for h in leaf_hashes:
            self.push(h)

    def root(self) -> bytes:
        """MTH of the leaves pushed so far."""
        if not self._stack:
            return empty_root()
        node = self._stack[-1]
        for left in reversed(self._stack[:-1]):
            node = hash_children(left, node)
        return node

    @property
    def hashes(self) -> tuple[bytes, ...]:
        """The subtree roots, largest (leftmost) first."""
        return tuple(self._stack)

    def to_bytes(self) -> bytes:
        """The hashes concatenated (for storage next to a signed head)."""
        return b"".join(self._stack)

    @classmethod
    def from_bytes(cls, size: int, blob: bytes) -> TreeFrontier:
        """Inverse of :meth:`to_bytes`."""
        hashes = [blob[i : i + HASH_SIZE] for i in range(0, len(blob), HASH_SIZE)]
        return cls(size, hashes)

    def copy(self) -> TreeFrontier:
        """An independent copy."""
        return TreeFrontier(self.size, self._stack)


def root_of(leaf_hashes: Iterable[bytes]) -> bytes:
    """MTH over leaf hashes, streamed (RFC 9162 §2.1.1)."""
    frontier = TreeFrontier()
    frontier.extend(leaf_hashes)
    return frontier.root()


def subtree_hasher(leaf_hashes: Sequence[bytes]) -> Subtree:
    """A ``subtree(lo, hi)`` over an in-memory list of leaf hashes."""

    def subtree(lo: int, hi: int) -> bytes:
        frontier = TreeFrontier()
        for i in range(lo, hi):
            frontier.push(leaf_hashes[i])
        return frontier.root()

    return subtree


def cached_subtree(fetch: Subtree, cache: dict[tuple[int, int], bytes], tile: int = 256) -> Subtree:
    """A ``subtree(lo, hi)`` that splits ranges per RFC 9162 §2.1.1 and caches perfect subtrees.

    ``fetch(lo, hi)`` computes MTH(D[lo:hi]) from storage for ranges of at most ``tile``
    leaves; perfect subtrees of ``tile`` leaves and up are kept in ``cache`` (keyed by
    start and size). Only valid while those leaves cannot change, as in an append-only
    log: after the first proof over a range, later proofs read only O(log n) short ranges.
    """

    def subtree(lo: int, hi: int) -> bytes:
        n = hi - lo
        perfect = n & (n - 1) == 0
        if perfect and (lo, n) in cache:
            return cache[(lo, n)]
        if n <= tile:
            node = fetch(lo, hi)
        else:
            k = _split(n)
            node = hash_children(subtree(lo, lo + k), subtree(lo + k, hi))
        if perfect and n >= tile:
            cache[(lo, n)] = node
        return node

    return subtree


# --- proof generation -----------------------------------------------------------------


def inclusion_proof(index: int, size: int, subtree: Subtree) -> list[bytes]:
    """PATH(m, D[n]) (RFC 9162 §2.1.3.1), deepest sibling first."""
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is outside a tree of size {size}")

    def path(m: int, lo: int, hi: int) -> list[bytes]:
        n = hi - lo
        if n == 1:
            return []
        k = _split(n)
        if m < k:
            return path(m, lo, lo + k) + [subtree(lo + k, hi)]
        return path(m - k, lo + k, hi) + [subtree(lo, lo + k)]

    return path(index, 0, size)


def consistency_proof(old_size: int, new_size: int, subtree: Subtree) -> list[bytes]:
    """PROOF(m, D[n]) = SUBPROOF(m, D[n], true) (RFC 9162 §2.1.4.1); empty for m in {0, n}."""
    if not 0 <= old_size <= new_size:
        raise ValueError(f"no consistency proof from size {old_size} to size {new_size}")
    if old_size in (0, new_size):
        return []

    def subproof(m: int, lo: int, hi: int, whole: bool) -> list[bytes]:
        n = hi - lo
        if m == n:
            return [] if whole else [subtree(lo, hi)]
        k = _split(n)
        if m <= k:
            return subproof(m, lo, lo + k, whole) + [subtree(lo + k, hi)]
        return subproof(m - k, lo + k, hi, False) + [subtree(lo, lo + k)]

    return subproof(old_size, 0, new_size, True)


# --- proof verification ---------------------------------------------------------------


def _check_hash(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise MerkleProofError(f"{what} is {len(value)} bytes, expected {HASH_SIZE}")


def root_from_inclusion_proof(index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes]) -> bytes:
    """The root an inclusion proof leads to (RFC 9162 §2.1.3.2 steps 1-4)."""
    if index >= size or index < 0:
        raise MerkleProofError(f"leaf index {index} is not below tree size {size}")
    _check_hash(leaf_hash, "leaf hash")
    fn, sn = index, size - 1
    r = leaf_hash
    for i, p in enumerate(proof):
        _check_hash(p, f"inclusion proof element {i}")
        if sn == 0:
            raise MerkleProofError(f"inclusion proof has {len(proof)} elements, more than a tree of size {size} needs")
        if fn & 1 or fn == sn:
            r = hash_children(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = hash_children(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise MerkleProofError(f"inclusion proof has {len(proof)} elements, too few for a tree of size {size}")
    return r


def verify_inclusion(index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes], root: bytes) -> None:
    """Raise :class:`MerkleProofError` unless the proof shows leaf ``index`` in the tree (RFC 9162 §2.1.3.2)."""
    _check_hash(root, "root hash")
    if root_from_inclusion_proof(index, size, leaf_hash, proof) != root:
        raise MerkleProofError(f"inclusion proof of leaf {index} in tree size {size} leads to a different root")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Raise :class:`MerkleProofError` unless the proof shows the old tree is a prefix (RFC 9162 §2.1.4.2)."""
    if old_size < 0 or old_size > new_size:
        raise MerkleProofError(f"tree size went from {old_size} down to {new_size}")
    if old_size == new_size:
        if proof:
            raise MerkleProofError("trees of equal size need an empty consistency proof")
        if old_root != new_root:
            raise MerkleProofError(f"two different roots for tree size {old_size}")
        return
    if old_size == 0:
        # Every tree extends the empty tree; a proof would be garbage.
        if proof:
            raise MerkleProofError("a consistency proof from the empty tree must be empty")
        return
    _check_hash(old_root, "old root hash")
    _check_hash(new_root, "new root hash")
    # Step 1.
    if not proof:
        raise MerkleProofError(f"empty consistency proof from size {old_size} to {new_size}")
    for i, c in enumerate(proof):
        _check_hash(c, f"consistency proof element {i}")
    path = list(proof)
    # Step 2: an old tree that is a perfect subtree is its own first node.
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    # Steps 3-4.
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # Step 5.
    fr = sr = path[0]
    # Step 6.
    for c in path[1:]:
        if sn == 0:
            raise MerkleProofError(f"consistency proof {old_size}->{new_size} is too long")
        if fn & 1 or fn == sn:
            fr = hash_children(c, fr)
            sr = hash_children(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = hash_children(sr, c)
        fn >>= 1
        sn >>= 1
    # Step 7.
    if sn != 0:
        raise MerkleProofError(f"consistency proof {old_size}->{new_size} is too short")
    if fr != old_root:
        raise MerkleProofError(f"consistency proof {old_size}->{new_size} does not lead to the old root")
    if sr != new_root:
        raise MerkleProofError(f"consistency proof {old_size}->{new_size} does not lead to the new root")
