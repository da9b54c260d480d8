"""Role-scoped bearer tokens for the consent API, stored hashed in a 0600 JSON file.

A token is shown once, when it is created; the file keeps only its SHA-256. A fast hash is
enough here (unlike for passwords) because tokens are 256 random bits: there is nothing to
guess. Roles: ``auditor`` reads everything, ``partner-writer`` records consents,
``coordinator`` reads tree heads and proofs only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedcrm.errors import AuthorizationError, ConfigError

__all__ = [
    "ROLES",
    "Role",
    "TokenRecord",
    "TokenStore",
    "check_token_file",
    "create_token",
    "list_tokens",
    "revoke_token",
]

Role = Literal["auditor", "partner-writer", "coordinator"]
ROLES: tuple[str, ...] = get_args(Role)
_PREFIX = "fcc_"  # makes a leaked token recognisable to secret scanners


class TokenRecord(BaseModel):
    """One issued token: who, which role, and the SHA-256 of the secret."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=100)
    role: Role
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    created_at: datetime


class _TokenFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    tokens: list[TokenRecord] = []


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _check_mode(path: Path) -> None:
    st = path.stat()
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{path}: the token file is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & ~0o600:
        # Group/other bits (or an executable bit) on a credentials file are a mistake to stop at, not to serve with.
        raise ConfigError(
            f"{path}: token file has mode {mode:o}, wider than 600 (readable by others?); run `chmod 600 {path}`"
        )


def _read(path: Path) -> _TokenFile:
    if not path.exists():
        return _TokenFile()
    _check_mode(path)
    try:
        return _TokenFile.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the token file: {exc}") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "file"
        raise ConfigError(f"{path}: {where}: {first['msg']}") from exc


def _write(path: Path, content: _TokenFile) -> None:
    """Write atomically with mode 0600 from the first byte (never briefly world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tokens-", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(content.model_dump(mode="json"), indent=2) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def create_token(path: Path | str, role: str, name: str) -> str:
    """Issue a new token for ``role`` under ``name``; returns the secret (shown only this once)."""
    path = Path(path)
    if role not in ROLES:
        raise ConfigError(f"unknown role '{role}' (roles: {', '.join(ROLES)})")
    content = _read(path)
    if any(t.name == name for t in content.tokens):
        raise ConfigError(f"{path}: a token named '{name}' already exists; revoke it first")
    token = _PREFIX + secrets.token_urlsafe(32)
    record = TokenRecord(name=name, role=role, sha256=_hash(token), created_at=datetime.now(UTC))  # type: ignore[arg-type]
    content.tokens.append(record)
    _write(path, content)
    return token


def revoke_token(path: Path | str, name: str) -> None:
    """Remove the token called ``name``."""
    path = Path(path)
    content = _read(path)
    kept = [t for t in content.tokens if t.name != name]
    if len(kept) == len(content.tokens):
        raise ConfigError(f"{path}: no token named '{name}'")
    content.tokens = kept
    _write(path, content)


def list_tokens(path: Path | str) -> list[TokenRecord]:
    """The issued tokens (names, roles, hashes; never the secrets)."""
    return list(_read(Path(path)).tokens)


class TokenStore:
    """Checks presented bearer tokens against the hashed file (re-read when it changes)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, ...] | None = None
        self._records: list[TokenRecord] = []

    def _load(self) -> list[TokenRecord]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return []
        # The mode is part of the stamp: a chmod alone must be noticed (and a widened mode refused).
        stamp = (st.st_mtime_ns, st.st_size, st.st_mode, st.st_ino)
        if stamp != self._stamp:
            self._records = _read(self.path).tokens
            self._stamp = stamp
        return self._records

    def authenticate(self, token: str | None) -> TokenRecord:
        """The record of a valid token.

        Raises
        ------
        AuthorizationError
            If the token is missing or unknown.
        ConfigError
            If the token file became unusable (e.g. its mode was widened): nobody is let in.
        """
        if not token:
            raise AuthorizationError("missing bearer token")
        digest = _hash(token)
        match = None
        for record in self._load():
            # Compare every record in constant time so timing does not reveal a near match.
            if hmac.compare_digest(record.sha256, digest):
                match = record
        if match is None:
            raise AuthorizationError("unknown bearer token")
        return match


def check_token_file(path: Path | str) -> int:
    """Refuse a token file a server should not start with; return how many tokens it holds.

    Raises
    ------
    ConfigError
        The file is missing, not a regular file, has a mode wider than 0600, or is invalid.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no token file; create one with `fedcrm consent token create --tokens {path} ...`")
    return len(_read(path).tokens)
