"""Customer overlap between two partners: the coordinator relays a cardinality-only PSI (no Flower here).

The coordinator only forwards opaque PSI messages between the two partners' ClientApps
(:mod:`fedcrm.client.federated.overlap` does the cryptography at home) and receives the count
from the counting partner, which sends it only when at least its own minimum count; the
coordinator withholds a count below the report's minimum too. One session per identifier kind
(e-mail, phone): a count of shared identifiers of that kind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fedcrm.protocol import OverlapOrder, OverlapReply, WireValue

#: ``(node id, order config) -> reply config``: one get_properties exchange with one partner.
Ask = Callable[[int, dict[str, WireValue]], dict[str, WireValue]]


@dataclass(frozen=True)
class OverlapResult:
    """A pair's overlap on one identifier kind; ``count`` None when withheld under a minimum count."""

    counting: str
    other: str
    kind: str
    purpose: str
    session: str
    count: int | None
    heads: dict[str, str]

    def summary(self) -> dict[str, object]:
        """JSON-ready (no identifier, only the count or its absence)."""
        return {"partners": [self.counting, self.other], "identifier": self.kind, "purpose": self.purpose,
                "session": self.session, "count": self.count, "withheld": self.count is None}


def overlap_count(ask: Ask, *, run_id: str, session: str, purpose: str, kind: str, counting: tuple[int, str],
                  other: tuple[int, str], min_count: int) -> OverlapResult:
    """Relay the three PSI steps between ``counting`` and ``other`` (node id, partner name)."""
    (a_node, a_name), (b_node, b_name) = counting, other
    base = {"run_id": run_id, "session": session, "purpose": purpose, "identifiers": (kind,)}
    request = OverlapReply.from_config(ask(a_node, OverlapOrder(step="request", counterpart=b_name,
                                                                  **base).to_config()))
    response = OverlapReply.from_config(ask(b_node, OverlapOrder(step="respond", counterpart=a_name,
                                                                   payload=request.payload, **base).to_config()))
    counted = OverlapReply.from_config(ask(a_node, OverlapOrder(step="count", counterpart=b_name,
                                                                  payload=response.payload, setup=response.setup,
                                                                  **base).to_config()))
    count = counted.count if counted.count is not None and counted.count >= min_count else None
    return OverlapResult(counting=a_name, other=b_name, kind=kind, purpose=purpose, session=session, count=count,
                         heads={a_name: counted.ledger_checkpoint, b_name: response.ledger_checkpoint})
