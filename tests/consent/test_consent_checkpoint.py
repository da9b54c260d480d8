"""Signed tree heads are C2SP checkpoints: they round-trip and any changed byte breaks them."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from fedcrm.consent import checkpoint as cp
from fedcrm.errors import CheckpointError, SigningKeyError

ORIGIN = "fedcrm.test/partner-a/consent"
ROOT = hashlib.sha256(b"some root").digest()


@pytest.fixture
def key(tmp_path: Path):
    path = tmp_path / "k.pem"
    cp.generate_signing_key(path)
    return cp.load_signing_key(path)


def test_note_has_the_checkpoint_layout(key) -> None:
    head = cp.sign_checkpoint(ORIGIN, 42, ROOT, key)
    lines = head.note.split("\n")
    assert lines[:4] == [ORIGIN, "42", base64.b64encode(ROOT).decode(), ""]
    assert lines[4].startswith("\u2014 " + ORIGIN + " ") and lines[5] == ""
    blob = base64.b64decode(lines[4].rsplit(" ", 1)[1])
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    # signed-note key hash for Ed25519: SHA-256(name || "\n" || 0x01 || key)[:4], then the 64-byte signature.
    assert blob[:4] == hashlib.sha256(ORIGIN.encode() + b"\n\x01" + raw).digest()[:4]
    assert len(blob) == 68
    key.public_key().verify(blob[4:], head.body.encode())


def test_round_trip(key) -> None:
    head = cp.sign_checkpoint(ORIGIN, 7, ROOT, key)
    back = cp.verify_checkpoint(head.note, key.public_key(), ORIGIN, origin=ORIGIN)
    assert (back.origin, back.size, back.root_hash, back.note) == (ORIGIN, 7, ROOT, head.note)


def test_any_changed_byte_fails(key) -> None:
    note = cp.sign_checkpoint(ORIGIN, 123456, ROOT, key).note.encode()
    for i in range(len(note)):
        for flip in (0x01, 0x20):
            changed = bytearray(note)
            changed[i] ^= flip
            try:
                text = changed.decode()
            except UnicodeDecodeError:
                continue  # not even text: cannot be presented as a note
            with pytest.raises(CheckpointError):
                cp.verify_checkpoint(text, key.public_key(), ORIGIN, origin=ORIGIN)


def test_other_key_or_origin_fails(key, tmp_path: Path) -> None:
    cp.generate_signing_key(tmp_path / "other.pem")
    other = cp.load_signing_key(tmp_path / "other.pem")
    note = cp.sign_checkpoint(ORIGIN, 1, ROOT, key).note
    with pytest.raises(CheckpointError):
        cp.verify_checkpoint(note, other.public_key(), ORIGIN)
    with pytest.raises(CheckpointError):
        cp.verify_checkpoint(note, key.public_key(), ORIGIN, origin="someone.else/log")


def test_verifier_string_round_trips_and_checks_its_hash(key) -> None:
    verifier = cp.verifier_string(ORIGIN, key.public_key())
    name, hash_hex, b64 = verifier.split("+", 2)
    assert name == ORIGIN and len(hash_hex) == 8 and base64.b64decode(b64)[0] == 1
    name2, pub = cp.parse_verifier(verifier)
    assert name2 == ORIGIN and cp.public_key_pem(pub) == cp.public_key_pem(key.public_key())
    with pytest.raises(CheckpointError):
        cp.parse_verifier(f"{name}+00000000+{b64}")


def test_signing_key_file_is_private_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    cp.generate_signing_key(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    before = path.read_bytes()
    with pytest.raises(SigningKeyError, match="exists"):
        cp.generate_signing_key(path)
    assert path.read_bytes() == before


def test_bad_key_files_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    with pytest.raises(SigningKeyError, match="bad.pem"):
        cp.load_signing_key(bad)
    with pytest.raises(SigningKeyError, match="missing.pem"):
        cp.load_signing_key(tmp_path / "missing.pem")
