"""The Merkle tree matches RFC 6962's published vectors and an independent implementation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymerkle import InmemoryTree

from fedcrm.consent import merkle
from fedcrm.errors import MerkleProofError

VECTORS = json.loads((Path(__file__).parents[1] / "fixtures" / "ct_rfc6962_vectors.json").read_text())
LEAVES = [merkle.hash_leaf(bytes.fromhex(x)) for x in VECTORS["leaves_hex"]]
ROOTS = {int(k): bytes.fromhex(v) for k, v in VECTORS["roots"].items()}
H = bytes.fromhex


def test_prefixes_are_rfc_6962_domain_separators() -> None:
    assert merkle.LEAF_PREFIX == b"\x00" and merkle.NODE_PREFIX == b"\x01"
    assert merkle.hash_leaf(b"").hex() == VECTORS["roots"]["1"]  # MTH of one empty leaf


def test_empty_tree_root_is_sha256_of_nothing() -> None:
    assert merkle.root_of([]).hex() == VECTORS["empty_root"]


@pytest.mark.parametrize("size", range(1, 9))
def test_root_of_every_prefix_matches_ct_vectors(size: int) -> None:
    assert merkle.root_of(LEAVES[:size]) == ROOTS[size]


@pytest.mark.parametrize("case", VECTORS["inclusion"], ids=lambda c: f"leaf{c['index']}-of-{c['size']}")
def test_inclusion_proofs_match_ct_vectors(case: dict) -> None:
    proof = merkle.inclusion_proof(case["index"], case["size"], merkle.subtree_hasher(LEAVES))
    assert [p.hex() for p in proof] == case["proof"]
    merkle.verify_inclusion(case["index"], case["size"], LEAVES[case["index"]], [H(p) for p in case["proof"]], ROOTS[case["size"]])


@pytest.mark.parametrize("case", VECTORS["consistency"], ids=lambda c: f"{c['size1']}-to-{c['size2']}")
def test_consistency_proofs_match_ct_vectors(case: dict) -> None:
    proof = merkle.consistency_proof(case["size1"], case["size2"], merkle.subtree_hasher(LEAVES))
    assert [p.hex() for p in proof] == case["proof"]
    merkle.verify_consistency(case["size1"], case["size2"], ROOTS[case["size1"]], ROOTS[case["size2"]], [H(p) for p in case["proof"]])


def _inclusion_corruptions(index: int, size: int, proof: list[bytes]) -> list[tuple[int, int, bytes, list[bytes]]]:
    """The corruptions the CT Go tests probe: wrong index, size, leaf, extra or missing or flipped nodes."""
    leaf = LEAVES[index]
    out = [(index + 1, size, leaf, proof), (index ^ 2, size, leaf, proof), (index, size * 2, leaf, proof),
           (index, size // 2, leaf, proof), (index, size, merkle.hash_leaf(b"wrong"), proof),
           (index, size, leaf, [*proof, ROOTS[size]]), (index, size, leaf, [ROOTS[size], *proof])]
    if index > 0:
        out.append((index - 1, size, leaf, proof))
    if proof:
        out.append((index, size, leaf, proof[:-1]))
    for i in range(len(proof)):
        flipped = list(proof)
        flipped[i] = bytes([flipped[i][0] ^ 8]) + flipped[i][1:]
        out.append((index, size, leaf, flipped))
    return out


@pytest.mark.parametrize("case", [c for c in VECTORS["inclusion"] if c["proof"]], ids=lambda c: f"leaf{c['index']}-of-{c['size']}")
def test_corrupted_inclusion_proofs_are_rejected(case: dict) -> None:
    proof = [H(p) for p in case["proof"]]
    for index, size, leaf, bad in _inclusion_corruptions(case["index"], case["size"], proof):
        with pytest.raises(MerkleProofError):
            merkle.verify_inclusion(index, size, leaf, bad, ROOTS[case["size"]])


@pytest.mark.parametrize("case", [c for c in VECTORS["consistency"] if c["proof"]], ids=lambda c: f"{c['size1']}-to-{c['size2']}")
def test_corrupted_consistency_proofs_are_rejected(case: dict) -> None:
    m, n = case["size1"], case["size2"]
    proof = [H(p) for p in case["proof"]]
    r1, r2 = ROOTS[m], ROOTS[n]
    probes = [(m - 1, n, r1, r2, proof), (m + 1, n, r1, r2, proof), (m ^ 2, n, r1, r2, proof), (m, n * 2, r1, r2, proof),
              (m, n // 2, r1, r2, proof), (m, n, ROOTS[1] if m != 1 else ROOTS[2], r2, proof), (m, n, r2, r1, proof),
              (m, n, r1, r2, []), (m, n, r1, r2, [*proof, r1]), (m, n, r1, r2, [r2, *proof]), (m, n, r1, r2, proof[:-1])]
    for i in range(len(proof)):
        flipped = list(proof)
        flipped[i] = bytes([flipped[i][0] ^ 16]) + flipped[i][1:]
        probes.append((m, n, r1, r2, flipped))
    for size1, size2, root1, root2, bad in probes:
        if size1 <= 0:
            continue  # size 0 is trivially consistent with anything
        with pytest.raises(MerkleProofError):
            merkle.verify_consistency(size1, size2, root1, root2, bad)


def test_trivial_consistency_cases() -> None:
    merkle.verify_consistency(0, 5, b"", ROOTS[5], [])
    merkle.verify_consistency(3, 3, ROOTS[3], ROOTS[3], [])
    with pytest.raises(MerkleProofError):
        merkle.verify_consistency(3, 3, ROOTS[3], ROOTS[4], [])
    with pytest.raises(MerkleProofError):
        merkle.verify_consistency(4, 3, ROOTS[4], ROOTS[3], [])


def test_frontier_round_trips_through_bytes_and_keeps_growing() -> None:
    frontier = merkle.TreeFrontier()
    frontier.extend(LEAVES[:5])
    restored = merkle.TreeFrontier.from_bytes(frontier.size, frontier.to_bytes())
    restored.extend(LEAVES[5:])
    assert restored.root() == ROOTS[8]


def _pymerkle_root(data: list[bytes]) -> bytes:
    tree = InmemoryTree(algorithm="sha256")
    for d in data:
        tree.append_entry(d)
    return tree.get_state()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=40), min_size=1, max_size=300))
def test_roots_equal_pymerkle_for_random_trees(data: list[bytes]) -> None:
    assert merkle.root_of(merkle.hash_leaf(d) for d in data) == _pymerkle_root(data)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 300), st.data())
def test_every_generated_proof_verifies_and_matches_pymerkle_roots(size: int, draw: st.DataObject) -> None:
    data = [i.to_bytes(4, "big") for i in range(size)]
    leaves = [merkle.hash_leaf(d) for d in data]
    subtree = merkle.subtree_hasher(leaves)
    index = draw.draw(st.integers(0, size - 1))
    old = draw.draw(st.integers(1, size))
    root, old_root = _pymerkle_root(data), _pymerkle_root(data[:old])
    merkle.verify_inclusion(index, size, leaves[index], merkle.inclusion_proof(index, size, subtree), root)
    merkle.verify_consistency(old, size, old_root, root, merkle.consistency_proof(old, size, subtree))


def test_cached_subtrees_give_the_same_proofs_and_skip_storage_reads() -> None:
    leaves = [merkle.hash_leaf(i.to_bytes(4, "big")) for i in range(1500)]
    plain = merkle.subtree_hasher(leaves)
    reads: list[tuple[int, int]] = []

    def fetch(lo: int, hi: int) -> bytes:
        reads.append((lo, hi))
        return plain(lo, hi)

    cached = merkle.cached_subtree(fetch, {}, tile=64)
    assert merkle.inclusion_proof(700, 1500, cached) == merkle.inclusion_proof(700, 1500, plain)
    first = len(reads)
    assert merkle.inclusion_proof(12, 1500, cached) == merkle.inclusion_proof(12, 1500, plain)
    assert merkle.consistency_proof(1024, 1500, cached) == merkle.consistency_proof(1024, 1500, plain)
    assert all(hi - lo <= 64 for lo, hi in reads)
    assert len(reads) - first < first / 3
