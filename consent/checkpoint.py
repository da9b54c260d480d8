"""Signed tree heads in the transparency-log checkpoint format (C2SP tlog-checkpoint).

A checkpoint is a *signed note* (C2SP signed-note) whose text is three lines::

    <origin>
    <tree size, decimal>
    <root hash, base64>

followed by a blank line and one signature line per signer::

    — <key name> <base64(4-byte key hash || Ed25519 signature)>

The signature is over the note text (the three lines, each ending in a newline). For
Ed25519 the key hash is the first 4 bytes of SHA-256(key name || 0x0A || 0x01 || public
key), and the verifier key string is ``<name>+<hex key hash>+<base64(0x01 || public key)>``,
so Go's ``golang.org/x/mod/sumdb/note`` and the transparency-dev tools read our heads.
Ed25519 itself comes from ``cryptography``; nothing here is hand-made crypto.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedcrm.errors import CheckpointError, SigningKeyError

__all__ = [
    "Checkpoint",
    "generate_signing_key",
    "key_hash",
    "load_public_key",
    "load_signing_key",
    "parse_checkpoint",
    "parse_verifier",
    "public_key_pem",
    "sign_checkpoint",
    "verifier_string",
    "verify_checkpoint",
]

#: Signature type byte of Ed25519 in signed notes.
ED25519_ALG = b"\x01"
#: U+2014 EM DASH, then a space, starts every signature line.
SIG_PREFIX = "\u2014 "


@dataclass(frozen=True)
class Checkpoint:
    """A signed tree head: what the log committed to, and the note text that proves it."""

    origin: str
    size: int
    root_hash: bytes
    note: str

    @property
    def body(self) -> str:
        """The signed text (origin, size, root lines)."""
        return checkpoint_body(self.origin, self.size, self.root_hash)


def checkpoint_body(origin: str, size: int, root_hash: bytes) -> str:
    """The note text of a checkpoint (C2SP tlog-checkpoint), each line newline-terminated."""
    return f"{origin}\n{size}\n{base64.b64encode(root_hash).decode()}\n"


def _check_key_name(name: str) -> None:
    # signed-note: a key name is non-empty and has no spaces, '+' or newlines.
    if not name or any(c.isspace() or c == "+" for c in name):
        raise CheckpointError(f"key name {name!r} must be non-empty and contain no whitespace or '+'")


def key_hash(name: str, public_key: Ed25519PublicKey) -> bytes:
    """First 4 bytes of SHA-256(name || 0x0A || 0x01 || public key) (C2SP signed-note, Ed25519)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(name.encode() + b"\n" + ED25519_ALG + raw).digest()[:4]


def verifier_string(name: str, public_key: Ed25519PublicKey) -> str:
    """The signed-note verifier key: ``<name>+<hex key hash>+<base64(0x01 || public key)>``."""
    _check_key_name(name)
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"{name}+{key_hash(name, public_key).hex()}+{base64.b64encode(ED25519_ALG + raw).decode()}"


def parse_verifier(verifier: str) -> tuple[str, Ed25519PublicKey]:
    """The key name and public key of a verifier string (checks its key hash)."""
    parts = verifier.strip().split("+", 2)  # base64 may itself contain "+"
    if len(parts) != 3:
        raise CheckpointError(f"verifier {verifier!r} is not <name>+<hash>+<key>")
    name, hash_hex, key_b64 = parts
    try:
        blob = base64.b64decode(key_b64, validate=True)
    except ValueError as exc:
        raise CheckpointError(f"verifier key of {name!r} is not base64") from exc
    if len(blob) != 33 or blob[:1] != ED25519_ALG:
        raise CheckpointError(f"verifier key of {name!r} is not an Ed25519 key (0x01 || 32 bytes)")
    public_key = Ed25519PublicKey.from_public_bytes(blob[1:])
    if key_hash(name, public_key).hex() != hash_hex:
        raise CheckpointError(f"verifier of {name!r}: key hash {hash_hex} does not match the key")
    return name, public_key


def sign_checkpoint(origin: str, size: int, root_hash: bytes, key: Ed25519PrivateKey, key_name: str | None = None) -> Checkpoint:
    """Sign a tree head; the key name defaults to the origin (usual for logs)."""
    if "\n" in origin or not origin:
        raise CheckpointError(f"origin {origin!r} must be one non-empty line")
    name = key_name or origin
    _check_key_name(name)
    body = checkpoint_body(origin, size, root_hash)
    signature = key.sign(body.encode())
    blob = key_hash(name, key.public_key()) + signature
    note = f"{body}\n{SIG_PREFIX}{name} {base64.b64encode(blob).decode()}\n"
    return Checkpoint(origin=origin, size=size, root_hash=root_hash, note=note)


def _split_note(note: str) -> tuple[str, list[str]]:
    if not note.endswith("\n"):
        raise CheckpointError("checkpoint note must end with a newline")
    body, sep, sigs = note.partition("\n\n")
    if not sep:
        raise CheckpointError("checkpoint note has no blank line before its signatures")
    lines = sigs.split("\n")[:-1]
    if not lines:
        raise CheckpointError("checkpoint note has no signature line")
    return body + "\n", lines


def parse_checkpoint(note: str) -> Checkpoint:
    """Parse a checkpoint note WITHOUT checking signatures (use :func:`verify_checkpoint`)."""
    body, _ = _split_note(note)
    lines = body.split("\n")[:-1]
    if len(lines) < 3:
        raise CheckpointError(f"checkpoint body has {len(lines)} lines, needs origin, size and root hash")
    origin, size_text, root_text = lines[0], lines[1], lines[2]
    if not size_text.isdigit() or (size_text != "0" and size_text.startswith("0")):
        raise CheckpointError(f"checkpoint line 2: tree size {size_text!r} is not a decimal number")
    try:
        root = base64.b64decode(root_text, validate=True)
    except ValueError as exc:
        raise CheckpointError("checkpoint line 3: root hash is not base64") from exc
    if len(root) != 32:
        raise CheckpointError(f"checkpoint line 3: root hash is {len(root)} bytes, expected 32")
    if base64.b64encode(root).decode() != root_text:
        raise CheckpointError("checkpoint line 3: root hash is not canonical base64")
    return Checkpoint(origin=origin, size=int(size_text), root_hash=root, note=note)


def verify_checkpoint(note: str, public_key: Ed25519PublicKey, key_name: str, origin: str | None = None) -> Checkpoint:
    """Parse and check a checkpoint: a signature line by ``key_name`` with ``public_key`` must verify."""
    checkpoint = parse_checkpoint(note)
    if origin is not None and checkpoint.origin != origin:
        raise CheckpointError(f"checkpoint origin {checkpoint.origin!r} is not the expected {origin!r}")
    body, sig_lines = _split_note(note)
    expected_hash = key_hash(key_name, public_key)
    for line in sig_lines:
        if not line.startswith(SIG_PREFIX):
            raise CheckpointError(f"signature line {line!r} does not start with an em dash and a space")
        name, _, blob_b64 = line[len(SIG_PREFIX) :].partition(" ")
        try:
            blob = base64.b64decode(blob_b64, validate=True)
        except ValueError as exc:
            raise CheckpointError(f"signature of {name!r} is not base64") from exc
        if base64.b64encode(blob).decode() != blob_b64:
            # Non-canonical base64 (e.g. set padding bits) would let the same note exist in many spellings.
            raise CheckpointError(f"signature of {name!r} is not canonical base64")
        if name != key_name or blob[:4] != expected_hash:
            continue  # another signer (e.g. a witness): not ours to check
        try:
            public_key.verify(blob[4:], body.encode())
        except InvalidSignature as exc:
            raise CheckpointError(f"signature of {key_name!r} on checkpoint size {checkpoint.size} does not verify") from exc
        return checkpoint
    raise CheckpointError(f"checkpoint carries no signature by key {key_name!r}")


# --- key files --------------------------------------------------------------------------


def generate_signing_key(path: Path) -> Ed25519PublicKey:
    """Create an Ed25519 private key file (PKCS#8 PEM, mode 0600); refuse to overwrite."""
    path = Path(path)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise SigningKeyError(f"{path}: signing key exists already; not overwriting it") from exc
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return key.public_key()


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """Read an Ed25519 private key PEM file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"{path}: cannot read signing key ({exc.strerror})") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SigningKeyError(f"{path}: not an unencrypted PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path}: key is {type(key).__name__}, expected Ed25519")
    return key


def public_key_pem(public_key: Ed25519PublicKey) -> bytes:
    """SubjectPublicKeyInfo PEM of a public key."""
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_key(pem: bytes, source: str = "public key") -> Ed25519PublicKey:
    """Parse an Ed25519 public key PEM (``source`` names it in errors)."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SigningKeyError(f"{source}: not a PEM public key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"{source}: key is {type(key).__name__}, expected Ed25519")
    return key
