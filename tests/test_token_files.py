"""The hashed token files both HTTP APIs use (fedcrm.token_files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedcrm.consent.tokens import TokenStore, create_token
from fedcrm.coordinator.api_tokens import OperatorTokenStore, create_operator_token
from fedcrm.errors import AuthorizationError, ConfigError


def test_each_api_refuses_the_other_apis_token_file_and_tokens(tmp_path: Path) -> None:
    consent_file, operator_file = tmp_path / "consent-tokens.json", tmp_path / "operator-tokens.json"
    auditor = create_token(consent_file, "auditor", "dpo")
    operator = create_operator_token(operator_file, "operator", "ops")
    assert auditor.startswith("fcc_") and operator.startswith("fco_")
    assert TokenStore(consent_file).authenticate(auditor).role == "auditor"
    assert OperatorTokenStore(operator_file).authenticate(operator).role == "operator"
    # A token of one API is unknown to the other, and a file of the other's roles is refused outright.
    with pytest.raises(AuthorizationError, match="unknown bearer token"):
        TokenStore(consent_file).authenticate(operator)
    with pytest.raises(ConfigError, match=r"tokens\.0\.role: 'operator' is not a role of this API"):
        TokenStore(operator_file).authenticate(operator)
    with pytest.raises(ConfigError, match=r"tokens\.0\.role: 'auditor' is not a role of this API"):
        OperatorTokenStore(consent_file).authenticate(auditor)
