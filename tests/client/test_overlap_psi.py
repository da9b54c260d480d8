"""Customer overlap by cardinality-only PSI on the bundled overlap pair (real ClientApps, in-process grid)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from flwr.app import Message
from flwr.common import GetPropertiesIns
from flwr.compat.common.recorddict_compat import getpropertiesins_to_recorddict, recorddict_to_getpropertiesres

from fedcrm.client.federated.overlap import normalise_email, normalise_phone
from fedcrm.client.flower_app import app
from fedcrm.coordinator.analytics_overlap import overlap_count
from fedcrm.errors import OrderRefused
from fedcrm.paths import DATASETS
from tests.federation import init_partner
from tests.inprocess_grid import InProcessGrid

PAIR = DATASETS / "examples" / "overlap_pair"
TRUTH = json.loads((PAIR / "truth.json").read_text())


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    tmp = tmp_path_factory.mktemp("pair")
    configs = []
    for name in ("P", "Q"):
        shutil.copytree(PAIR / name, tmp / name)
        config = tmp / name / "partner.toml"
        config.write_text(config.read_text().replace("[privacy]\n", '[privacy]\negress_journal = "full"\n'))
        init_partner(config)
        configs.append(config)
    return configs


def _ask(grid: InProcessGrid):  # noqa: ANN202
    def ask(node: int, config: dict) -> dict:
        content = getpropertiesins_to_recorddict(GetPropertiesIns(config=dict(config)))
        reply = grid.send_and_receive([Message(content=content, dst_node_id=node, message_type="get_properties",
                                               group_id="overlap")])[0]
        return dict(recorddict_to_getpropertiesres(reply.content).properties)
    return ask


def test_identifiers_are_normalised_at_home() -> None:
    assert normalise_email("  Ann.Lee@Example.COM ") == "ann.lee@example.com"
    assert normalise_email("not an address") is None
    assert normalise_phone("+999 7700 910001") == normalise_phone("00999-7700-910001") == "9997700910001"
    assert normalise_phone("07700 910001", "999") == "9997700910001"
    assert normalise_phone("12-34") is None


@pytest.mark.parametrize(("kind", "truth"), [("email", TRUTH["shared_email"]), ("phone", TRUTH["shared_phone"])])
def test_overlap_count_equals_the_true_overlap_and_only_the_count_leaves(pair: list[Path], kind: str,
                                                                          truth: int) -> None:
    grid = InProcessGrid(app, pair)
    result = overlap_count(_ask(grid), run_id="overlap-test", session=f"s-{kind}", purpose="audience_overlap",
                           kind=kind, counting=(1, "P"), other=(2, "Q"), min_count=10)
    assert result.count == truth
    # Both ledgers recorded the use for the overlap's purpose, naming run and counterpart.
    from fedcrm.client.approvals import open_partner_ledger
    from fedcrm.client.config import load_partner_config

    for config, counterpart in zip(pair, ("Q", "P"), strict=True):
        with open_partner_ledger(load_partner_config(config)) as ledger:
            usage = [s.event for s in ledger.events_of_kind("usage") if s.event.purpose == "audience_overlap"]
        assert any(e.model_version == f"overlap-test:overlap:s-{kind}:{counterpart}" and e.stage == "overlap"
                   and e.columns == (kind,) for e in usage)
    # What left each partner: no identifier in any form, and the count only from the counting partner.
    contacts = {c.parent.name: (c.parent / "contacts.csv").read_text().splitlines()[1:] for c in pair}
    for config in pair:
        egress = config.parent / "work" / "egress"
        wire = b"".join(p.read_bytes() for p in egress.glob("*.bin"))
        for line in contacts[config.parent.name][:300]:
            customer, email, phone = line.split(",")
            for value in (customer, email.strip(), email.strip().lower(), phone, normalise_phone(phone, "999") or "x"):
                if value:
                    assert value.encode() not in wire, f"{value!r} left partner {config.parent.name}"
    replies = [json.loads(x) for x in (pair[1].parent / "work" / "egress" / "journal.jsonl").read_text().splitlines()]
    assert all("fedcrm.count" not in str(r) for r in replies), "the responding partner sent a count"


def test_overlap_count_below_the_minimum_is_withheld(pair: list[Path], tmp_path: Path) -> None:
    grid = InProcessGrid(app, pair)
    result = overlap_count(_ask(grid), run_id="overlap-test", session="s-min", purpose="audience_overlap",
                           kind="email", counting=(1, "P"), other=(2, "Q"), min_count=TRUTH["shared_email"] + 1)
    assert result.count is None and result.summary()["withheld"] is True


def test_a_purpose_the_partners_policy_does_not_allow_is_refused(pair: list[Path], tmp_path: Path) -> None:
    strict = tmp_path / "Q"
    shutil.copytree(pair[1].parent, strict)
    config = strict / "partner.toml"
    config.write_text(config.read_text().replace("[privacy]\n", '[privacy]\npurposes = ["churn_prediction"]\n'))
    grid = InProcessGrid(app, [pair[0], config])
    with pytest.raises(OrderRefused, match="audience_overlap"):
        overlap_count(_ask(grid), run_id="overlap-test", session="s-refused", purpose="audience_overlap",
                      kind="email", counting=(1, "P"), other=(2, "Q"), min_count=10)
