"""Checking leaves against signed heads with no database, and the exported bundle.

:func:`check_log` is the one verification routine: the ledger feeds it rows streamed
from SQL, :func:`verify_bundle` feeds it the lines of an exported bundle. It
recomputes every leaf hash from the entry's data, every root with an O(n) streaming
frontier, compares each signed head on the way, and names the first bad index.

A bundle is either a directory (``bundle.json``, ``checkpoint.txt``,
``public_key.pem``, ``leaves.jsonl``) or one JSON file holding the same fields. It has
no personal payloads: leaves carry only salted hashes of personal values.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedcrm.consent import checkpoint as cp
from fedcrm.consent.events import canonical_json, salted_hash
from fedcrm.consent.merkle import TreeFrontier, consistency_proof, hash_leaf, subtree_hasher, verify_consistency
from fedcrm.errors import BundleError, CheckpointError, MerkleProofError, SigningKeyError

if TYPE_CHECKING:
    from fedcrm.consent.ledger import Ledger

__all__ = ["BUNDLE_FORMAT", "LeafRow", "VerificationReport", "check_log", "export_bundle", "verify_bundle"]

BUNDLE_FORMAT = "fedcrm-consent-bundle/1"


@dataclass(frozen=True)
class VerificationReport:
    """Outcome of a verification: ``ok``, or the first bad index and why."""

    ok: bool
    checked_size: int
    message: str
    first_bad_index: int | None = None
    #: "entry", "head", "signature", "truncated", "consistency" or "" when ok.
    failure: str = ""
    head_size: int = 0
    trusted_size: int | None = None


class LeafRow(NamedTuple):
    """One stored entry as the checker sees it (a tuple: a million are made per full check)."""

    idx: int
    public_json: str
    stored_leaf_hash: bytes | None = None
    #: field -> (salt, value) of personal payloads still stored.
    payloads: dict[str, tuple[bytes, str]] | None = None


class _Bad(Exception):
    def __init__(self, failure: str, index: int | None, message: str) -> None:
        super().__init__(message)
        self.failure, self.index, self.message = failure, index, message


def _check_entry(row: LeafRow, expected: int) -> bytes:
    # Substring tests instead of parsing: in canonical JSON without nested objects a
    # '"key":' can only be a real top-level key, since a '"' inside a string value is
    # always escaped. A leaf whose text is not valid JSON still fails its signed head.
    text = row.public_json
    if row.idx != expected:
        raise _Bad("entry", expected, f"entry {expected} is missing (the next stored entry is {row.idx})")
    tag = f'"index":{expected}'
    if not (f"{tag}," in text or text.endswith(tag + "}")):
        raise _Bad("entry", expected, f"entry {expected}: its data carries another index (rows reordered or renumbered)")
    leaf = hash_leaf(text.encode())
    if row.stored_leaf_hash is not None and row.stored_leaf_hash != leaf:
        raise _Bad("entry", expected, f"entry {expected}: data does not hash to the stored leaf hash (edited)")
    for name, (salt, value) in (row.payloads or {}).items():
        if f'"{name}_salted_sha256":"{salted_hash(salt, value)}"' not in text:
            raise _Bad("entry", expected, f"entry {expected}: personal field '{name}' does not match its salted hash")
    return leaf


def check_log(
    rows: Iterable[LeafRow],
    heads: Iterable[tuple[int, bytes]],
    newest: cp.Checkpoint,
    *,
    trusted: cp.Checkpoint | None = None,
    head_check: Any = None,
) -> VerificationReport:
    """Check entries (ordered by index) against signed heads.

    Parameters
    ----------
    rows: the stored entries, ordered by index.
    heads: ``(size, root)`` of stored heads, ordered by size; each is compared when
        the recomputed tree reaches its size, which locates a bad entry to the
        entries after the last matching head.
    newest: the newest head, signature already checked by the caller.
    trusted: a head held outside (signature checked): the log must extend it.
    head_check: ``callable(size) -> str | None`` called on a head that does not match,
        returning why the head itself is bad (bad signature, altered row) or None.
    """
    frontier = TreeFrontier()
    keep = [] if trusted is not None else None  # leaf hashes, only for the RFC consistency proof
    head_iter: Iterator[tuple[int, bytes]] = iter(heads)
    next_head = next(head_iter, None)
    proven = 0
    expected = 0
    try:
        for row in rows:
            if expected >= newest.size:
                raise _Bad("entry", expected, f"entry {expected} is not covered by the newest signed head (size {newest.size})")
            leaf = _check_entry(row, expected)
            frontier.push(leaf)
            if keep is not None:
                keep.append(leaf)
            expected += 1
            while next_head is not None and next_head[0] <= expected:
                size, root = next_head
                if size == expected and frontier.root() != root:
                    why = head_check(size) if head_check else None
                    if why:
                        raise _Bad("head", None, why)
                    raise _Bad(
                        "entry", proven,
                        f"entries {proven}..{size - 1} do not match the signed head of size {size}; "
                        f"entry {proven} is the first not proven by an earlier head",
                    )
                if size == expected:
                    proven = size
                next_head = next(head_iter, None)
            if trusted is not None and expected == trusted.size and frontier.root() != trusted.root_hash:
                raise _Bad(
                    "consistency", None,
                    f"the log is not consistent with the trusted head of size {trusted.size}: "
                    f"some entry below {trusted.size} was rewritten (and re-signed)",
                )
        if expected < newest.size:
            raise _Bad("truncated", expected, f"the newest signed head has size {newest.size} but the log ends at {expected}")
        if frontier.root() != newest.root_hash:
            raise _Bad("entry", proven, f"entries {proven}..{newest.size - 1} do not match the newest signed head")
        if trusted is not None:
            if trusted.size > newest.size:
                raise _Bad(
                    "truncated", newest.size,
                    f"the log was truncated: the trusted head has size {trusted.size}, the log only {newest.size}",
                )
            assert keep is not None
            # What a monitor holding only the two heads would check (RFC 9162 §2.1.4.2).
            proof = consistency_proof(trusted.size, newest.size, subtree_hasher(keep))
            try:
                verify_consistency(trusted.size, newest.size, trusted.root_hash, newest.root_hash, proof)
            except MerkleProofError as exc:
                raise _Bad("consistency", None, f"consistency with the trusted head failed: {exc}") from None
    except _Bad as bad:
        return VerificationReport(
            ok=False, checked_size=expected, message=bad.message, first_bad_index=bad.index, failure=bad.failure,
            head_size=newest.size, trusted_size=trusted.size if trusted else None,
        )
    note = f"; consistent with the trusted head of size {trusted.size}" if trusted else ""
    return VerificationReport(
        ok=True, checked_size=expected, message=f"{expected} entries match the signed head of size {newest.size}{note}",
        head_size=newest.size, trusted_size=trusted.size if trusted else None,
    )


def coerce_trusted(trusted: cp.Checkpoint | str, public_key: Ed25519PublicKey, key_name: str, origin: str) -> cp.Checkpoint:
    """A trusted head given as a Checkpoint or note text, its signature checked."""
    note = trusted.note if isinstance(trusted, cp.Checkpoint) else trusted
    return cp.verify_checkpoint(note, public_key, key_name, origin=origin)


# --- the exported bundle ----------------------------------------------------------------


def _manifest(origin: str, verifier: str, size: int) -> dict[str, Any]:
    return {"format": BUNDLE_FORMAT, "origin": origin, "verifier": verifier, "size": size}


def export_bundle(ledger: Ledger, path: Path) -> cp.Checkpoint:
    """Write the ledger's public log as a bundle: a ``.json`` path gives one file, else a directory."""
    path = Path(path)
    head = ledger.latest_checkpoint()
    leaves = ledger.public_leaves(0, head.size)
    pem = ledger.public_key_pem.decode()
    manifest = _manifest(head.origin, ledger.verifier, head.size)
    if path.suffix == ".json":
        doc = {**manifest, "checkpoint": head.note, "public_key_pem": pem, "leaves": leaves}
        path.write_text(json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True) + "\n", encoding="ascii")
        return head
    path.mkdir(parents=True, exist_ok=True)
    (path / "bundle.json").write_text(canonical_json(manifest) + "\n", encoding="utf-8")
    (path / "checkpoint.txt").write_text(head.note, encoding="utf-8")
    (path / "public_key.pem").write_text(pem, encoding="utf-8")
    with (path / "leaves.jsonl").open("w", encoding="utf-8", newline="\n") as fh:
        for leaf in leaves:
            fh.write(leaf + "\n")
    return head


def _read_bundle(path: Path) -> tuple[dict[str, Any], str, str, Sequence[str]]:
    """Manifest, checkpoint note, public key PEM and leaves; every byte must be canonical."""
    if path.is_dir():
        manifest_text = (path / "bundle.json").read_text(encoding="utf-8")
        manifest = json.loads(manifest_text)
        if not isinstance(manifest, dict):
            raise BundleError(f"{path / 'bundle.json'}: not a JSON object")
        if manifest_text != canonical_json(manifest) + "\n":
            raise BundleError(f"{path / 'bundle.json'}: not in canonical form (edited?)")
        leaves_text = (path / "leaves.jsonl").read_text(encoding="utf-8")
        if leaves_text and not leaves_text.endswith("\n"):
            raise BundleError(f"{path / 'leaves.jsonl'}: last line has no newline")
        leaves = leaves_text.split("\n")[:-1] if leaves_text else []
        return manifest, (path / "checkpoint.txt").read_text(encoding="utf-8"), (path / "public_key.pem").read_text(encoding="utf-8"), leaves
    raw = path.read_bytes()
    try:
        doc = json.loads(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"{path}: not an ASCII JSON bundle ({exc})") from None
    if not isinstance(doc, dict):
        raise BundleError(f"{path}: top level is not an object")
    if raw != (json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True) + "\n").encode():
        raise BundleError(f"{path}: not in canonical form (edited?)")
    for name, kind in (("checkpoint", str), ("public_key_pem", str), ("leaves", list)):
        if not isinstance(doc.get(name), kind):
            raise BundleError(f"{path}: field '{name}' is missing or not a {kind.__name__}")
    manifest = {k: v for k, v in doc.items() if k not in ("checkpoint", "public_key_pem", "leaves")}
    if not all(isinstance(x, str) for x in doc["leaves"]):
        raise BundleError(f"{path}: field 'leaves' must hold strings")
    return manifest, doc["checkpoint"], doc["public_key_pem"], doc["leaves"]


def verify_bundle(
    path: Path, trusted: cp.Checkpoint | str | None = None, verifier: str | None = None, public_key_pem: bytes | None = None
) -> VerificationReport:
    """Verify a bundle offline: signature, every leaf, the root, and (optionally) a trusted head.

    ``verifier`` (a signed-note verifier string) or ``public_key_pem`` pins the expected
    key; without either the bundle's own key is used, which proves the bundle intact
    but not who made it.
    """
    path = Path(path)
    try:
        manifest, note, pem, leaves = _read_bundle(path)
        if set(manifest) != {"format", "origin", "verifier", "size"} or not isinstance(manifest.get("origin"), str):
            raise BundleError(f"{path}: manifest needs exactly the fields format, origin, verifier, size")
        if manifest.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"{path}: field 'format' is {manifest.get('format')!r}, expected {BUNDLE_FORMAT!r}")
        key_name, public_key = cp.parse_verifier(str(manifest.get("verifier")))
        pem_key = cp.load_public_key(pem.encode(), f"{path}: public_key_pem")
        if cp.verifier_string(key_name, pem_key) != manifest["verifier"] or pem != cp.public_key_pem(pem_key).decode():
            raise BundleError(f"{path}: public key PEM and field 'verifier' disagree")
        if verifier is not None and verifier.strip() != manifest["verifier"]:
            raise BundleError(f"{path}: signed by {manifest['verifier']!r}, not the expected verifier {verifier.strip()!r}")
        if public_key_pem is not None:
            pinned = cp.load_public_key(public_key_pem, "pinned public key")
            if cp.public_key_pem(pinned) != cp.public_key_pem(public_key):
                raise BundleError(f"{path}: signed by {manifest['verifier']!r}, not by the pinned public key")
        head = cp.verify_checkpoint(note, public_key, key_name, origin=manifest.get("origin"))
        if head.size != manifest.get("size") or head.size != len(leaves):
            raise BundleError(f"{path}: checkpoint size {head.size}, field 'size' {manifest.get('size')}, {len(leaves)} leaves")
        trusted_cp = coerce_trusted(trusted, public_key, key_name, head.origin) if trusted is not None else None
    except (BundleError, CheckpointError, SigningKeyError, OSError, ValueError) as exc:
        return VerificationReport(ok=False, checked_size=0, message=str(exc), failure="signature")
    rows = (LeafRow(i, text) for i, text in enumerate(leaves))
    return check_log(rows, [], head, trusted=trusted_cp)
