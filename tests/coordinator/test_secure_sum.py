"""Secure sums through SecAgg+ (real ``secaggplus_mod`` and workflow, in-process grid): exact sums, and
what leaves each partner is masked digits and a receipt, never a statistic."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

from fedcrm.client.flower_app import app, plain_app
from fedcrm.client.ingest import load_customers
from fedcrm.client.partner_session import PartnerSession
from fedcrm.client.stats import local_statistics
from fedcrm.coordinator.federated_stats import combine_statistics
from fedcrm.coordinator.secure_sum import SecureSumSettings, secure_sum
from fedcrm.coordinator.workflows import StageGrid
from fedcrm.errors import OrderRefused, ProtocolError
from fedcrm.protocol import ROWS_KEY, SecureStatisticsOrder, load_task_schema, statistics_cells
from fedcrm.secure_vector import SecureVectorCodec
from tests.federation import TELCO_TASK, copy_partners
from tests.inprocess_grid import InProcessGrid

TASK = load_task_schema(TELCO_TASK)


@pytest.fixture(scope="module")
def partners(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return copy_partners(tmp_path_factory.mktemp("partners"), egress="full")


def _order(codec: SecureVectorCodec) -> SecureStatisticsOrder:
    return SecureStatisticsOrder(run_id="r1", server_round=0, task_schema=TASK, task_schema_sha256=TASK.sha256(),
                                 cells=statistics_cells(TASK), fraction_bits=codec.fraction_bits, limbs=codec.limbs,
                                 quantization_range=codec.quantization_range, modulus_range=codec.modulus_range)


def _clear_cells(config: Path) -> dict[str, float]:
    """The same partner's cells computed without any framework (all its training-split customers)."""
    session = PartnerSession(config)
    frame = load_customers(session.config)
    train = session.split(frame, validation=False)
    return local_statistics(train, TASK, min_count=session.config.privacy.min_count, partner=session.name)


def test_codec_sums_are_exact_up_to_the_documented_bound() -> None:
    codec = SecureVectorCodec()
    rng = np.random.default_rng(0)
    names = [f"c{i}" for i in range(50)]
    parts = [{n: float(v) for n, v in zip(names, rng.normal(0, 1e9, 50), strict=True)} for _ in range(7)]
    parts[0]["c0"] = 123456789.0  # an integer cell
    mean = sum(codec.encode(names, p) for p in parts) / len(parts)
    assert np.all(np.abs(mean * len(parts)) < codec.base * len(parts))
    decoded = codec.decode(names, mean, len(parts))
    for n in names:
        exact = float(sum(Fraction(p.get(n, 0.0)) for p in parts))  # exact rational sum, rounded once
        assert abs(decoded[n] - exact) <= codec.error_bound(len(parts)) + abs(exact) * 2**-52
    with pytest.raises(ProtocolError, match="outside what the encoding holds"):
        codec.encode(["x"], {"x": float("inf")})
    with pytest.raises(ProtocolError, match="not in the order"):
        codec.encode(["x"], {"y": 1.0})


def test_secure_statistics_equal_the_framework_free_sum_and_nothing_else_leaves(partners: list[Path]) -> None:
    codec = SecureVectorCodec()
    cells = statistics_cells(TASK)
    grid = InProcessGrid(app, partners)
    stages: list[str] = []
    result = secure_sum(StageGrid(grid, 60.0), order=dict(_order(codec).to_config()), cells=cells,
                        node_ids=grid.get_node_ids(), node_names={1: "A", 2: "B", 3: "C"},
                        settings=SecureSumSettings(num_partners=3, min_partners=3, stage_timeout=60.0, codec=codec),
                        server_round=0, stage="stats", on_stage=lambda r, s, p: stages.append(s))
    assert stages == ["setup", "share_keys", "collect_masked_vectors", "unmask"]
    assert result.contributors == ["A", "B", "C"]
    clear = {p.parent.name: _clear_cells(p) for p in partners}
    for cell in cells:
        exact = sum(c.get(cell, 0.0) for c in clear.values())
        assert result.sums[cell] == pytest.approx(exact, abs=codec.error_bound(3) + abs(exact) * 1e-15)
    assert result.sums[ROWS_KEY] == sum(c[ROWS_KEY] for c in clear.values())
    # the scaling from the secure sums equals the one from per-partner cells
    secure, plain = combine_statistics({"all": result.sums}, TASK), combine_statistics(clear, TASK)
    for feature, (mean, std) in plain.items():
        assert secure[feature] == pytest.approx((mean, std), rel=1e-9)

    # wire capture: every reply each partner sent (its egress journal, exact bytes)
    for config in partners:
        egress = config.parent / "work" / "egress"
        entries = [json.loads(line) for line in (egress / "journal.jsonl").read_text().splitlines()]
        assert [e["message_type"] for e in entries] == ["train"] * 4
        wire = b"".join((egress / e["wire_file"]).read_bytes() for e in entries)
        own = clear[config.parent.name]
        for cell, value in own.items():
            for text in {repr(value), repr(float(value)), f"{value:g}", str(int(value)) if value.is_integer() else ""}:
                if len(text) >= 5:  # short strings occur by chance in random bytes
                    assert text.encode() not in wire, f"{cell} = {value} left partner {config.parent.name}"
        assert np.float64(own[ROWS_KEY]).tobytes() not in wire
        for e in entries:
            assert all(not arrays for arrays in e["arrays"].values()), "an unmasked array left the partner"
            assert not e["metrics"] or set(e["metrics"].get("fitres.metrics", [])) <= {
                "fedcrm.partner", "fedcrm.consent-as-of", "fedcrm.ledger-checkpoint", "fedcrm.protocol-version"}
        proto = ProtoRecordDict()
        proto.ParseFromString((egress / entries[2]["wire_file"]).read_bytes())
        assert "stat." not in str(proto), "a statistic's name travelled with a value"


def test_a_secure_sum_order_is_refused_where_nothing_would_mask_it(partners: list[Path]) -> None:
    from flwr.app import Message
    from flwr.common import FitIns, Parameters
    from flwr.compat.common.recorddict_compat import fitins_to_recorddict

    grid = InProcessGrid(plain_app, partners[:1])
    order = dict(_order(SecureVectorCodec()).to_config())
    content = fitins_to_recorddict(FitIns(Parameters([], "numpy.ndarray"), order), True)
    with pytest.raises(OrderRefused, match="only masked by SecAgg+"):
        grid.send_and_receive([Message(content=content, dst_node_id=1, message_type="train", group_id="0")])


def test_a_partner_missing_from_a_secure_sum_fails_it_naming_the_partner_and_the_stage(partners: list[Path]) -> None:
    from fedcrm.errors import SecureAggregationHalted

    codec = SecureVectorCodec()
    grid = InProcessGrid(app, partners)
    grid.offline = {3}
    with pytest.raises(SecureAggregationHalted, match=r"round 0 failed at stage 'stats': partner\(s\) C — secure sum "
                                                      r"stopped at SecAgg\+ stage 'setup'"):
        secure_sum(StageGrid(grid, 5.0), order=dict(_order(codec).to_config()), cells=statistics_cells(TASK),
                   node_ids=grid.get_node_ids(), node_names={1: "A", 2: "B", 3: "C"},
                   settings=SecureSumSettings(num_partners=3, min_partners=3, stage_timeout=5.0, codec=codec),
                   server_round=0, stage="stats")
