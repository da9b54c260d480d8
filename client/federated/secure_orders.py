"""Answer an admitted secure-sum order with the partner's encoded vector and its receipt.

The vector (statistics, k-means step or segment profile) is computed over the partner's
consented customers, with every cell below the partner's minimum count withheld, and encoded
by the order's codec; ``secaggplus_mod`` masks it before it leaves. Only the receipt (name,
consent time, ledger head) travels in the clear. The partner refuses an order whose cell list
is not exactly the one its kind and shape imply: the coordinator cannot ask for anything else.
"""

from __future__ import annotations

import numpy as np

from fedcrm.client.dp_sums import PROFILES, decide_release
from fedcrm.client.features import encode_features
from fedcrm.client.federated.kmeans import assign, step_sums
from fedcrm.client.federated.profiles import profile_sums
from fedcrm.client.partner_session import PartnerSession, RoundOrder
from fedcrm.client.vocabulary import partner_vocabulary
from fedcrm.errors import ProtocolError
from fedcrm.logging import get_logger
from fedcrm.protocol import (
    SecureStatisticsOrder,
    SecureSumOrder,
    SecureSumReceipt,
    SegmentProfileOrder,
    SegmentSumsOrder,
    profile_cells,
    segment_cells,
    statistics_cells,
)

log = get_logger(__name__)


def expected_cells(order: SecureSumOrder) -> tuple[str, ...]:
    """The only cell list an order of this kind and shape may ask for."""
    task = order.task_schema
    if isinstance(order, SecureStatisticsOrder):
        return statistics_cells(task)
    if isinstance(order, SegmentSumsOrder):
        return segment_cells(len(order.centroids), task.width)
    if isinstance(order, SegmentProfileOrder):
        return profile_cells(task, len(order.centroids), order.histogram_edges)
    raise ProtocolError(f"{order.NAME}: not a secure-sum order this partner answers")


def local_cells(session: PartnerSession, order: SecureSumOrder, admitted: RoundOrder) -> tuple[dict[str, float],
                                                                                               SecureSumReceipt]:
    """The partner's cells for ``order`` (each over ≥ its minimum count) and the receipt."""
    task = order.task_schema
    min_count = session.config.privacy.min_count
    if isinstance(order, SecureStatisticsOrder):
        reply = session.statistics(task, admitted, dp_noise=order.dp_noise)
        cells, at, head = dict(reply.cells), reply.consent_as_of, reply.ledger_checkpoint
        dp_epsilon = reply.dp_epsilon
    else:
        release = None
        if isinstance(order, SegmentProfileOrder):  # the partner decides on DP noise before reading any data
            release = decide_release(session.config, mechanism=PROFILES, purpose=admitted.purpose,
                                     run_id=admitted.run_id, server_round=admitted.server_round, at=admitted.at,
                                     asked=order.dp_noise, vocabulary=partner_vocabulary(session.config),
                                     stage=order.stage, task=task, schema_hash=admitted.schema_hash)
        dp_epsilon = None if release is None else release.epsilon
        view, head = session.consented(task, admitted, session.task_columns(task, with_label=False))
        at = view.at
        frame = view.frame
        x = encode_features(frame, task, order.scaling).astype(np.float64) if len(frame) else np.zeros((0, task.width))
        centroids = np.asarray(order.centroids, dtype=np.float64)
        if centroids.ndim != 2 or centroids.shape[1] != task.width:
            raise ProtocolError(f"{order.NAME}: centres must have {task.width} columns (the task's encoding)")
        if isinstance(order, SegmentSumsOrder):
            result = step_sums(x, centroids, min_count=min_count)
            cells, withheld = result.cells, result.withheld
        else:
            labels = assign(x, centroids) if len(x) else np.zeros(0, dtype=int)
            result = profile_sums(frame, labels, task, len(centroids), min_count=min_count,
                                  histogram_edges=order.histogram_edges, dp=release, at=admitted.at)
            cells, withheld = result.cells, result.withheld
        if withheld:
            log.info("secure-sum cells withheld: below the minimum count", extra={"cell": order.stage})
    receipt = SecureSumReceipt(partner=session.name, consent_as_of=at, ledger_checkpoint=head, dp_epsilon=dp_epsilon)
    return cells, receipt


def answer_secure_order(session: PartnerSession, order: SecureSumOrder, admitted: RoundOrder) -> tuple[np.ndarray,
                                                                                                      SecureSumReceipt]:
    """The encoded vector (to be masked by SecAgg+) and the receipt of one secure-sum order."""
    expected = expected_cells(order)
    if tuple(order.cells) != expected:
        raise ProtocolError(f"{order.NAME}: the order asks for cells other than those of its kind "
                            f"({len(order.cells)} asked, {len(expected)} expected); refused")
    cells, receipt = local_cells(session, order, admitted)
    return order.codec().encode(order.cells, cells), receipt
