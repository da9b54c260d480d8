"""Pseudonymisation of customer ids with a key only the partner holds.

A pseudonym is ``"<key_id>:<hex>"``: HMAC-SHA256 of the raw id under the partner's
32-byte secret key, prefixed with the key's id (first 8 hex chars of SHA-256 of the
key) so every pseudonym says which key made it. The key is created only by
``fedcrm client init`` (mode 0600) and never leaves the partner. Rotation keeps an
old → new mapping inside the partner only.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from fedcrm.errors import MissingPartnerKey, PartnerKeyExists, PartnerKeyInvalid

KEY_BYTES = 32


def key_id(key: bytes) -> str:
    """Public id of a key: first 8 hex chars of its SHA-256 (reveals nothing usable)."""
    return hashlib.sha256(key).hexdigest()[:8]


def pseudonymise(raw_id: str, key: bytes) -> str:
    """Pseudonym of one raw customer id under ``key``."""
    digest = hmac.new(key, str(raw_id).encode("utf-8"), hashlib.sha256).hexdigest()
    return f"{key_id(key)}:{digest}"


def pseudonymise_series(raw_ids: pd.Series, key: bytes) -> pd.Series:
    """Pseudonyms of a column of raw ids (same index)."""
    prefix = key_id(key) + ":"
    mac = hmac.new(key, digestmod=hashlib.sha256)

    def one(value: object) -> str:
        h = mac.copy()
        h.update(str(value).encode("utf-8"))
        return prefix + h.hexdigest()

    return raw_ids.map(one)


def create_key(path: Path) -> str:
    """Create a new secret key file with mode 0600; refuse to overwrite. Returns the key id."""
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(KEY_BYTES)
    try:
        # O_EXCL: never overwrite an existing key (that would orphan every pseudonym made with it).
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise PartnerKeyExists(f"{path}: a partner key already exists; refusing to overwrite it") from exc
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.hex().encode("ascii"))
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    return key_id(key)


def load_key(path: Path) -> bytes:
    """Read the partner key; refuse a missing key, one others may read, or one that is not 32 hex bytes.

    Every refusal names the file and what to do (:class:`MissingPartnerKey`, :class:`PartnerKeyInvalid`).
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError as exc:
        raise MissingPartnerKey(
            f"{path}: partner key not found. Run `fedcrm client init --config <partner.toml>` first; "
            "no command reads customer data without the partner's own key."
        ) from exc
    except OSError as exc:
        raise PartnerKeyInvalid(f"{path}: cannot open the partner key ({exc.strerror}); it must be a regular "
                                "file readable by this user only") from exc
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise PartnerKeyInvalid(f"{path}: the partner key is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise PartnerKeyInvalid(
                f"{path}: the partner key has mode {mode:04o}: others on this machine could read it and "
                f"re-identify every customer. Restrict it with `chmod 600 {path}` (and check who may have copied "
                "it), then run the command again."
            )
        raw = handle.read(4 * KEY_BYTES + 64)  # a real key is 64 hex characters (+ a newline)
    text = raw.decode("ascii", errors="replace").strip()
    if len(text) != 2 * KEY_BYTES or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise PartnerKeyInvalid(
            f"{path}: not a partner key: expected {2 * KEY_BYTES} hex characters ({KEY_BYTES} bytes), found "
            f"{len(raw)} bytes{' that are not all hex' if len(text) == 2 * KEY_BYTES else ''}. Restore the key "
            "file from the partner's backup; a new key (`fedcrm client init`) cannot re-create earlier pseudonyms."
        )
    return bytes.fromhex(text)


def rotation_mapping(raw_ids: Iterable[str], old_key: bytes, new_key: bytes) -> dict[str, str]:
    """Old pseudonym → new pseudonym for every raw id (kept inside the partner only)."""
    return {pseudonymise(r, old_key): pseudonymise(r, new_key) for r in raw_ids}
