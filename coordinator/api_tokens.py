"""Role-scoped bearer tokens for the operator API and dashboard, stored hashed in a 0600 JSON file.

The file format and its checks are :mod:`fedcrm.token_files`, shared with the consent API. Roles:
``operator`` starts, stops and resumes runs and promotes models; ``viewer`` reads everything
and downloads models. Kept apart from the consent tokens: they are another party's
credentials with other roles, in another file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from fedcrm.token_files import TokenKind, TokenRecord, TokenStore

OperatorRole = Literal["operator", "viewer"]
OPERATOR_ROLES: tuple[str, ...] = get_args(OperatorRole)
#: A token of the operator API (the record type is shared with the consent API's).
OperatorToken = TokenRecord
OPERATOR_TOKENS = TokenKind(OPERATOR_ROLES, prefix="fco_",  # distinct from consent tokens (fcc_)
                            create_hint="fedcrm coordinator token create --tokens {path} --role operator --name …")


def create_operator_token(path: Path | str, role: str, name: str) -> str:
    """Issue a token for ``role`` under ``name``; returns the secret (shown only this once)."""
    return OPERATOR_TOKENS.create(path, role, name)


def revoke_operator_token(path: Path | str, name: str) -> None:
    """Remove the token called ``name``."""
    OPERATOR_TOKENS.revoke(path, name)


def list_operator_tokens(path: Path | str) -> list[OperatorToken]:
    """The issued tokens (names, roles, hashes; never the secrets)."""
    return OPERATOR_TOKENS.list(path)


def check_operator_token_file(path: Path | str) -> int:
    """Refuse a token file a server should not start with; return how many tokens it holds."""
    return OPERATOR_TOKENS.check_file(path)


class OperatorTokenStore(TokenStore):
    """Checks presented tokens against the operator API's hashed token file (re-read when it changes)."""

    def __init__(self, path: Path | str) -> None:
        super().__init__(path, OPERATOR_TOKENS)
