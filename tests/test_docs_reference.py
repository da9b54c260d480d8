"""The reference pages under docs/reference are exactly what the Pydantic models say (they cannot drift)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools import docs_reference


def test_the_committed_reference_pages_match_the_models() -> None:
    stale = docs_reference.stale_pages()
    assert stale == [], f"out of date: {[str(p) for p in stale]}; run `python -m tools.docs_reference`"


def test_every_key_of_every_config_model_is_documented() -> None:
    from fedcrm.client.config import ColumnSpec, PartnerConfig, PrivacySpec, SourceSpec
    from fedcrm.client.quality_rules import SpellingRules
    from fedcrm.coordinator.run_config import RunConfig
    from fedcrm.protocol import FeatureSpec, TaskSchema

    pages = {path.name: text for path, text in docs_reference.generate().items()}
    expected = {
        "partner-config.md": [PartnerConfig, SourceSpec, ColumnSpec, PrivacySpec, SpellingRules],
        "run-config.md": [RunConfig],
        "task-schema.md": [TaskSchema, FeatureSpec],
    }
    for page, models in expected.items():
        for model in models:
            for name, field in model.model_fields.items():
                if not field.exclude:
                    assert f"| `{name}` |" in pages[page], f"{page} lacks {model.__name__}.{name}"


def test_a_changed_model_makes_the_page_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(docs_reference, "OUT", tmp_path)
    for path, text in docs_reference.generate().items():
        path.write_text(text)
    assert docs_reference.stale_pages() == []
    page = tmp_path / "run-config.md"
    page.write_text(page.read_text().replace("| `rounds` | integer | `5` | ≥ 1, ≤ 1000 |", "| `rounds` | integer | `3` | |"))
    assert docs_reference.stale_pages() == [page]
