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
import re
from hashlib import sha256 as _sha256
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedcrm.consent import checkpoint as cp
from fedcrm.consent.events import SALT_BYTES, canonical_json
from fedcrm.consent.merkle import (
    LEAF_PREFIX,
    TreeFrontier,
    consistency_proof,
    subtree_hasher,
    verify_consistency,
)
from fedcrm.errors import BundleError, CheckpointError, MerkleProofError, SigningKeyError

if TYPE_CHECKING:
    from fedcrm.consent.ledger import Ledger

__all__ = ["BUNDLE_FORMAT", "HeadRow", "LeafRow", "VerificationReport", "check_log", "export_bundle", "verify_bundle"]

#: Version 2 carries every signed head (so an edit is located as the database check does);
#: version 1 bundles (the newest head only) still verify.
BUNDLE_FORMAT = "fedcrm-consent-bundle/2"
_FORMATS = ("fedcrm-consent-bundle/1", BUNDLE_FORMAT)
_INDEX = re.compile(r'"index":(\d+)[,}]')


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
    #: The stored ``kind`` and ``fingerprint`` columns (derived data, checked by ``integrity``).
    kind: str | None = None
    fingerprint: str | None = None


class HeadRow(NamedTuple):
    """A stored signed head: its size and root columns, and (where stored) its note and frontier."""

    size: int
    root_hash: bytes
    note: str | None = None
    frontier: bytes | None = None


class _Bad(Exception):
    def __init__(self, failure: str, index: int | None, message: str) -> None:
        super().__init__(message)
        self.failure, self.index, self.message = failure, index, message


def _check_entry(row: LeafRow, expected: int) -> bytes:
    # Substring tests instead of parsing: in canonical JSON without nested objects a
    # '"key":' can only be a real top-level key, since a '"' inside a string value is
    # always escaped. A leaf whose text is not valid JSON still fails its signed head.
    text = row.public_json
    if "\r" in text or "\n" in text:
        # Canonical JSON escapes control characters: a raw CR means CRLF line endings or an edit.
        raise _Bad("entry", expected, f"entry {expected}: its data contains a raw line break (CRLF line endings?)")
    if row.idx != expected:
        raise _Bad("entry", expected, f"entry {expected} is missing (the next stored entry is {row.idx})")
    tag = f'"index":{expected}'
    if not (f"{tag}," in text or text.endswith(tag + "}")):
        raise _Bad("entry", expected, f"entry {expected}: its data carries another index (rows reordered or renumbered)")
    leaf = _sha256(LEAF_PREFIX + text.encode()).digest()  # merkle.hash_leaf, inlined (a million calls per check)
    if row.stored_leaf_hash is not None and row.stored_leaf_hash != leaf:
        raise _Bad("entry", expected, f"entry {expected}: data does not hash to the stored leaf hash (edited)")
    if row.payloads:
        for name, (salt, value) in row.payloads.items():
            if len(salt) != SALT_BYTES:
                # The leaf commits to salt || value only: bytes moved between the two columns keep the hash and
                # change the value (an objection moved to a pseudonym nobody has). Every salt is SALT_BYTES long.
                raise _Bad("entry", expected, f"entry {expected}: personal field '{name}' has a salt of {len(salt)} "
                                              f"bytes, not {SALT_BYTES} (salt and value edited)")
            # events.salted_hash, inlined
            if f'"{name}_salted_sha256":"{_sha256(salt + value.encode()).hexdigest()}"' not in text:
                raise _Bad("entry", expected, f"entry {expected}: personal field '{name}' does not match its salted hash")
    return leaf


def check_log(
    rows: Iterable[LeafRow],
    heads: Iterable[HeadRow | tuple[int, bytes]],
    newest: cp.Checkpoint,
    *,
    trusted: cp.Checkpoint | None = None,
    head_check: Any = None,
    after: Any = None,
    start: TreeFrontier | None = None,
) -> VerificationReport:
    """Check entries (ordered by index) against signed heads.

    Parameters
    ----------
    rows: the stored entries, ordered by index.
    heads: stored heads (:class:`HeadRow`), ordered by size; each is checked when the
        recomputed tree reaches its size, which locates a bad entry to the entries
        after the last matching head. A stored frontier must equal the recomputed one.
    newest: the newest head, signature already checked by the caller.
    trusted: a head held outside (signature checked): the log must extend it.
    head_check: ``callable(head) -> str | None`` called on EVERY head before its root is
        compared, returning why the head itself is bad (bad signature, altered row) or None.
    after: ``callable() -> tuple[failure, index, message] | None`` run once the tree
        verified (derived-table checks); its problem becomes the report.
    start: the tree of entries already proven (by this process, against an earlier signed
        root): ``rows`` then begin at its size, and only they are checked and hashed onto it
        (in place: pass a copy; it holds the whole tree afterwards).
    """
    if start is not None and trusted is not None:
        raise ValueError("check_log: a trusted head needs every leaf (no start frontier)")
    frontier = TreeFrontier() if start is None else start
    keep = [] if trusted is not None else None  # leaf hashes, only for the RFC consistency proof
    head_iter: Iterator[HeadRow | tuple[int, bytes]] = iter(heads)
    next_head = next(head_iter, None)
    proven = frontier.size
    expected = frontier.size

    def pass_heads() -> None:
        nonlocal next_head, proven
        while next_head is not None and next_head[0] <= expected:
            head = HeadRow(*next_head)
            if head.size == expected:
                why = head_check(head) if head_check else None
                if why:
                    raise _Bad("head", None, why)
                if frontier.root() != head.root_hash:
                    raise _Bad(
                        "entry", proven,
                        f"entries {proven}..{head.size - 1} do not match the signed head of size {head.size}; "
                        f"entry {proven} is the first not proven by an earlier head",
                    )
                if head.frontier is not None and head.frontier != frontier.to_bytes():
                    raise _Bad("head", None, f"signed_heads row of size {head.size}: its stored frontier was altered "
                                             "(it does not match the tree; the next append would refuse it)")
                proven = head.size
            next_head = next(head_iter, None)

    try:
        pass_heads()
        for row in rows:
            if expected >= newest.size:
                raise _Bad("entry", expected, f"entry {expected} is not covered by the newest signed head (size {newest.size})")
            leaf = _check_entry(row, expected)
            frontier.push(leaf)
            if keep is not None:
                keep.append(leaf)
            expected += 1
            if next_head is not None and next_head[0] <= expected:  # the common case skips the call
                pass_heads()
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
        problem = after() if after is not None else None
        if problem is not None:
            raise _Bad(*problem)
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
    notes = ledger.head_notes(head.size)
    pem = ledger.public_key_pem.decode()
    manifest = _manifest(head.origin, ledger.verifier, head.size)
    if path.suffix == ".json":
        doc = {**manifest, "checkpoint": head.note, "checkpoints": notes, "public_key_pem": pem, "leaves": leaves}
        path.write_text(json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True) + "\n", encoding="ascii")
        return head
    path.mkdir(parents=True, exist_ok=True)
    (path / "bundle.json").write_bytes((canonical_json(manifest) + "\n").encode())
    (path / "checkpoint.txt").write_bytes(head.note.encode())
    (path / "public_key.pem").write_bytes(pem.encode())
    (path / "checkpoints.jsonl").write_bytes("".join(json.dumps(n, ensure_ascii=True) + "\n" for n in notes).encode())
    with (path / "leaves.jsonl").open("w", encoding="utf-8", newline="\n") as fh:
        for leaf in leaves:
            fh.write(leaf + "\n")
    return head


def _text(path: Path) -> str:
    """A file's exact text: UTF-8, no newline translation (a CRLF must not pass as LF)."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BundleError(f"{path}: not UTF-8 ({exc})") from None


def _lines(path: Path) -> list[str]:
    text = _text(path)
    if text and not text.endswith("\n"):
        raise BundleError(f"{path}: last line has no newline")
    return text.split("\n")[:-1] if text else []


def _read_bundle(path: Path) -> tuple[dict[str, Any], str, str, Sequence[str], list[str] | None]:
    """Manifest, checkpoint note, public key PEM, leaves and (format 2) every head; every byte must be canonical."""
    if path.is_dir():
        manifest_text = _text(path / "bundle.json")
        manifest = json.loads(manifest_text)
        if not isinstance(manifest, dict):
            raise BundleError(f"{path / 'bundle.json'}: not a JSON object")
        if manifest_text != canonical_json(manifest) + "\n":
            raise BundleError(f"{path / 'bundle.json'}: not in canonical form (edited?)")
        leaves = _lines(path / "leaves.jsonl")
        notes = None
        if (path / "checkpoints.jsonl").exists():
            notes = [json.loads(line) for line in _lines(path / "checkpoints.jsonl")]
            if not all(isinstance(n, str) for n in notes):
                raise BundleError(f"{path / 'checkpoints.jsonl'}: every line must be one JSON string (a note)")
        return manifest, _text(path / "checkpoint.txt"), _text(path / "public_key.pem"), leaves, notes
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
    notes = doc.get("checkpoints")
    if notes is not None and not (isinstance(notes, list) and all(isinstance(n, str) for n in notes)):
        raise BundleError(f"{path}: field 'checkpoints' must be a list of notes")
    manifest = {k: v for k, v in doc.items() if k not in ("checkpoint", "checkpoints", "public_key_pem", "leaves")}
    if not all(isinstance(x, str) for x in doc["leaves"]):
        raise BundleError(f"{path}: field 'leaves' must hold strings")
    return manifest, doc["checkpoint"], doc["public_key_pem"], doc["leaves"], notes


def _bundle_heads(notes: list[str], newest: cp.Checkpoint, public_key: Ed25519PublicKey, key_name: str) -> list[HeadRow]:
    """The bundle's heads, each signature checked, ordered by size and ending at the newest."""
    heads: list[HeadRow] = []
    for n, note in enumerate(notes):
        try:
            head = cp.verify_checkpoint(note, public_key, key_name, origin=newest.origin)
        except CheckpointError as exc:
            raise BundleError(f"signed head {n} of the bundle is bad: {exc}") from None
        if heads and head.size <= heads[-1].size:
            raise BundleError(f"signed head {n} of the bundle (size {head.size}) is out of order")
        heads.append(HeadRow(head.size, head.root_hash))
    if not heads or heads[-1].size != newest.size or heads[-1].root_hash != newest.root_hash:
        raise BundleError("the bundle's last signed head is not its checkpoint")
    return heads


def _leaf_rows(leaves: Sequence[str]) -> Iterator[LeafRow]:
    """Rows numbered by the index each leaf carries, so a missing leaf is named as missing."""
    for pos, text in enumerate(leaves):
        m = _INDEX.search(text)
        yield LeafRow(int(m.group(1)) if m else pos, text)


def verify_bundle(
    path: Path, trusted: cp.Checkpoint | str | None = None, verifier: str | None = None, public_key_pem: bytes | None = None
) -> VerificationReport:
    """Verify a bundle offline: signatures, every leaf, every root, and (optionally) a trusted head.

    ``verifier`` (a signed-note verifier string) or ``public_key_pem`` pins the expected
    key; without either the bundle's own key is used, which proves the bundle intact
    but not who made it.
    """
    path = Path(path)
    try:
        manifest, note, pem, leaves, notes = _read_bundle(path)
        if set(manifest) != {"format", "origin", "verifier", "size"} or not isinstance(manifest.get("origin"), str):
            raise BundleError(f"{path}: manifest needs exactly the fields format, origin, verifier, size")
        if manifest.get("format") not in _FORMATS:
            raise BundleError(f"{path}: field 'format' is {manifest.get('format')!r}, expected one of {_FORMATS}")
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
        if head.size != manifest.get("size"):
            raise BundleError(f"{path}: checkpoint size {head.size}, field 'size' {manifest.get('size')}")
        if manifest["format"] == BUNDLE_FORMAT and notes is None:
            raise BundleError(f"{path}: a {BUNDLE_FORMAT} bundle needs its signed heads (checkpoints)")
        heads = _bundle_heads(notes, head, public_key, key_name) if notes is not None else []
        trusted_cp = coerce_trusted(trusted, public_key, key_name, head.origin) if trusted is not None else None
    except (BundleError, CheckpointError, SigningKeyError, OSError, ValueError) as exc:
        return VerificationReport(ok=False, checked_size=0, message=str(exc), failure="signature")
    # A missing or extra leaf is an entry failure at its index (check_log names it), not a signature failure.
    return check_log(_leaf_rows(leaves), heads, head, trusted=trusted_cp)
