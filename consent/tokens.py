"""Role-scoped bearer tokens for the consent API, stored hashed in a 0600 JSON file.

Roles: ``auditor`` reads everything, ``partner-writer`` records consents, ``coordinator``
reads tree heads and proofs only. The file format and its checks are
:mod:`fedcrm.token_files`, shared with the operator API (which has other roles and its own file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from fedcrm.token_files import TokenKind, TokenRecord
from fedcrm.token_files import TokenStore as _HashedTokenStore

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
CONSENT_TOKENS = TokenKind(ROLES, prefix="fcc_",
                           create_hint="fedcrm consent token create --tokens {path} --role auditor --name …")


def create_token(path: Path | str, role: str, name: str) -> str:
    """Issue a new token for ``role`` under ``name``; returns the secret (shown only this once)."""
    return CONSENT_TOKENS.create(path, role, name)


def revoke_token(path: Path | str, name: str) -> None:
    """Remove the token called ``name``."""
    CONSENT_TOKENS.revoke(path, name)


def list_tokens(path: Path | str) -> list[TokenRecord]:
    """The issued tokens (names, roles, hashes; never the secrets)."""
    return CONSENT_TOKENS.list(path)


def check_token_file(path: Path | str) -> int:
    """Refuse a token file the consent API should not start with; return how many tokens it holds."""
    return CONSENT_TOKENS.check_file(path)


class TokenStore(_HashedTokenStore):
    """Checks presented bearer tokens against the consent API's hashed token file."""

    def __init__(self, path: Path | str) -> None:
        super().__init__(path, CONSENT_TOKENS)
