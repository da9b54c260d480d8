"""The consent vocabulary: fideslang keys, marked extensions, the tree, deployment files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedcrm.consent.taxonomy import default_vocabulary, load_vocabulary, parent_of
from fedcrm.errors import VocabularyError

FIXTURE = Path(__file__).parent.parent / "fixtures" / "fideslang_3_1_4_data_categories.json"


def fideslang_keys() -> dict[str, str | None]:
    data = json.loads(FIXTURE.read_text(encoding="utf-8"))
    assert data["fideslang_version"] == "3.1.4"
    return {c["fides_key"]: c["parent_key"] for c in data["data_categories"]}


def test_every_non_extension_key_is_a_fideslang_3_1_4_data_category() -> None:
    fides = fideslang_keys()
    vocab = default_vocabulary()
    ours = [c for c in vocab.categories.values() if not c.extension]
    assert ours, "the bundled taxonomy must carry fideslang categories"
    missing = sorted(c.key for c in ours if c.key not in fides)
    assert missing == []
    # Our parent rule (dotted prefix) must agree with fideslang's declared parent keys.
    assert all(c.parent == fides[c.key] for c in ours)


def test_extensions_are_marked_children_of_fideslang_keys() -> None:
    fides = fideslang_keys()
    vocab = default_vocabulary()
    extensions = {c.key for c in vocab.categories.values() if c.extension}
    assert {"user.behavior.service_subscription", "user.financial.billing", "user.demographic.household"} <= extensions
    for key in extensions:
        assert key not in fides
        assert parent_of(key) in vocab.categories


def test_required_keys_purposes_and_legal_bases_are_shipped() -> None:
    vocab = default_vocabulary()
    for key in (
        "user.contact.email",
        "user.demographic.age_range",
        "user.demographic.gender",
        "user.financial",
        "user.behavior.purchase_history",
        "user.unique_id",
    ):
        assert key in vocab.categories
    assert {"churn_prediction", "purchase_propensity", "customer_segmentation", "aggregate_analytics"} <= set(
        vocab.purposes
    )
    assert {b: vocab.legal_bases[b].coverage for b in ("consent", "contract", "legitimate_interest")} == {
        "consent": "opt_in",
        "contract": "opt_out",
        "legitimate_interest": "opt_out",
    }


def test_granting_a_parent_covers_its_children_but_not_the_reverse() -> None:
    vocab = default_vocabulary()
    assert vocab.covers("user.financial", "user.financial.billing")
    assert vocab.covers("user.financial.billing", "user.financial.billing")
    assert not vocab.covers("user.financial.billing", "user.financial")
    assert not vocab.covers("user.demographic.age_range", "user.demographic.gender")
    assert "user.financial.billing" in vocab.descendants("user.financial")


def test_churn_policy_leaves_out_gender_and_covers_the_telco_categories() -> None:
    vocab = default_vocabulary()
    churn = vocab.purpose("churn_prediction")
    assert churn.legal_basis == "legitimate_interest"
    assert vocab.purpose_covers("churn_prediction", "user.demographic.gender") is None
    for category in (
        "user.behavior.service_subscription",
        "user.financial",
        "user.financial.billing",
        "user.demographic.age_range",
        "user.demographic.household",
    ):
        assert vocab.purpose_covers("churn_prediction", category) is not None
    assert vocab.purpose("purchase_propensity").legal_basis == "consent"
    assert vocab.purpose("purchase_propensity").data_categories == ("user.behavior.purchase_history",)


def test_deployment_file_adds_an_extension_and_a_purpose(tmp_path: Path) -> None:
    extra = tmp_path / "site.yaml"
    extra.write_text(
        """
data_categories:
- key: user.behavior.service_subscription.roaming
  name: Roaming usage
  extension: true
purposes:
- key: network_planning
  name: Network planning
  legal_basis: legitimate_interest
  retention_days: 90
  data_categories: [user.behavior.service_subscription.roaming]
""",
        encoding="utf-8",
    )
    vocab = load_vocabulary(extra)
    assert vocab.covers("user.behavior.service_subscription", "user.behavior.service_subscription.roaming")
    assert vocab.purpose("network_planning").retention_days == 90
    assert str(extra) in vocab.sources
    # The bundled vocabulary is untouched by the deployment's load.
    assert "network_planning" not in default_vocabulary().purposes


def test_child_of_unknown_parent_names_the_file_and_key(tmp_path: Path) -> None:
    extra = tmp_path / "bad.yaml"
    extra.write_text(
        "data_categories:\n- key: user.loyalty.tier\n  name: Loyalty tier\n  extension: true\n", encoding="utf-8"
    )
    with pytest.raises(VocabularyError) as err:
        load_vocabulary(extra)
    assert str(extra) in str(err.value)
    assert "user.loyalty.tier" in str(err.value)
    assert "user.loyalty" in str(err.value)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("data_categories:\n- key: user.financial.billing.vat\n  name: VAT\n", "extension: true"),
        ("data_categories:\n- key: user.financial\n  name: again\n  extension: true\n", "already defined"),
        (
            "purposes:\n- key: p\n  name: P\n  legal_basis: vibes\n  retention_days: 1\n  data_categories: [user]\n",
            "unknown legal basis 'vibes'",
        ),
        (
            "purposes:\n- key: p\n  name: P\n  legal_basis: consent\n  retention_days: 1\n  data_categories: [user.x]\n",
            "unknown data category 'user.x'",
        ),
        ("purposes:\n- key: p\n  name: P\n  legal_basis: consent\n  data_categories: [user]\n", "retention_days"),
        ("purposes: [\n", "not valid YAML"),
    ],
)
def test_bad_deployment_files_are_refused_with_the_file_named(tmp_path: Path, text: str, needle: str) -> None:
    extra = tmp_path / "site.yaml"
    extra.write_text(text, encoding="utf-8")
    with pytest.raises(VocabularyError) as err:
        load_vocabulary(extra)
    assert str(extra) in str(err.value)
    assert needle in str(err.value)


def test_unknown_lookups_name_the_key() -> None:
    vocab = default_vocabulary()
    with pytest.raises(VocabularyError, match="unknown purpose 'marketing'"):
        vocab.purpose("marketing")
    with pytest.raises(VocabularyError, match="unknown data category 'user.shoe_size'"):
        vocab.ancestors("user.shoe_size")
