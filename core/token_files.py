"""Role-scoped bearer tokens kept hashed in a 0600 JSON file: one implementation for both HTTP APIs.

The consent API (``fedcrm.consent.tokens``: auditor, partner-writer, coordinator) and the
operator API (``fedcrm.coordinator.api_tokens``: operator, viewer) hold another party's
credentials with other roles in other files, but the mechanics are the same and live here.
A token is shown once, when it is created; the file keeps only its SHA-256. A fast hash is
enough here (unlike for passwords) because tokens are 256 random bits: there is nothing to
guess. A file readable by others, or one naming a role of another API, is refused and nobody
is let in.

Hand-written because no library keeps this small a thing: the APIs need bearer tokens
checked against a file the operator manages with a CLI, not an identity provider.
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
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedcrm.errors import AuthorizationError, ConfigError


class TokenRecord(BaseModel):
    """One issued token: who, which role, and the SHA-256 of the secret."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=100)
    role: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    created_at: datetime


class _TokenFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    tokens: list[TokenRecord] = []


def token_hash(token: str) -> str:
    """The SHA-256 (hex) a token file keeps for ``token``."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenKind:
    """The tokens of one API: its roles, the secret's prefix, and how to tell a user to create a file."""

    def __init__(self, roles: tuple[str, ...], prefix: str, create_hint: str) -> None:
        self.roles = roles
        self.prefix = prefix  # makes a leaked token recognisable to secret scanners
        self.create_hint = create_hint  # a command, with ``{path}`` for the file

    # -- the file -----------------------------------------------------------------------------
    def read(self, path: Path) -> list[TokenRecord]:
        """The records of ``path`` (none if it does not exist); refuses a wide mode, bad content, foreign roles."""
        if not path.exists():
            return []
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{path}: the token file is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & ~0o600:
            # Group/other bits (or an executable bit) on a credentials file are a mistake to stop at.
            raise ConfigError(
                f"{path}: token file has mode {mode:o}, wider than 600 (readable by others?); run `chmod 600 {path}`")
        try:
            content = _TokenFile.model_validate_json(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read the token file: {exc}") from exc
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "file"
            raise ConfigError(f"{path}: {where}: {first['msg']}") from exc
        for i, record in enumerate(content.tokens):
            if record.role not in self.roles:
                raise ConfigError(f"{path}: tokens.{i}.role: '{record.role}' is not a role of this API "
                                  f"(roles: {', '.join(self.roles)})")
        return list(content.tokens)

    @staticmethod
    def _write(path: Path, records: list[TokenRecord]) -> None:
        """Write atomically with mode 0600 from the first byte (never briefly world-readable)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tokens-", dir=path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(_TokenFile(tokens=records).model_dump(mode="json"), indent=2) + "\n")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # -- what the CLIs do ---------------------------------------------------------------------
    def create(self, path: Path | str, role: str, name: str) -> str:
        """Issue a new token for ``role`` under ``name``; returns the secret (shown only this once)."""
        path = Path(path)
        if role not in self.roles:
            raise ConfigError(f"unknown role '{role}' (roles: {', '.join(self.roles)})")
        records = self.read(path)
        if any(t.name == name for t in records):
            raise ConfigError(f"{path}: a token named '{name}' already exists; revoke it first")
        token = self.prefix + secrets.token_urlsafe(32)
        records.append(TokenRecord(name=name, role=role, sha256=token_hash(token), created_at=datetime.now(UTC)))
        self._write(path, records)
        return token

    def revoke(self, path: Path | str, name: str) -> None:
        """Remove the token called ``name``."""
        path = Path(path)
        records = self.read(path)
        kept = [t for t in records if t.name != name]
        if len(kept) == len(records):
            raise ConfigError(f"{path}: no token named '{name}'")
        self._write(path, kept)

    def list(self, path: Path | str) -> list[TokenRecord]:
        """The issued tokens (names, roles, hashes; never the secrets)."""
        return self.read(Path(path))

    def check_file(self, path: Path | str) -> int:
        """Refuse a token file a server should not start with; return how many tokens it holds.

        Raises
        ------
        ConfigError
            The file is missing, not a regular file, has a mode wider than 0600, or is invalid.
        """
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"{path}: no token file; create one with `{self.create_hint.format(path=path)}`")
        return len(self.read(path))


class TokenStore:
    """Checks presented bearer tokens against a hashed token file (re-read when it changes)."""

    def __init__(self, path: Path | str, kind: TokenKind) -> None:
        self.path = Path(path)
        self.kind = kind
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
            self._records = self.kind.read(self.path)
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
        digest = token_hash(token)
        match = None
        for record in self._load():
            # Compare every record in constant time so timing does not reveal a near match.
            if hmac.compare_digest(record.sha256, digest):
                match = record
        if match is None:
            raise AuthorizationError("unknown bearer token")
        return match
