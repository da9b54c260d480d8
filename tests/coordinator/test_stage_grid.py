"""The stage grid's reason for a partner that did not reply says whether the timeout ran out."""

from __future__ import annotations

import time
from collections.abc import Iterable
from types import SimpleNamespace

from fedcrm.coordinator.workflows import StageGrid


class _SilentGrid:
    """A grid on which nobody replies: it returns after ``wait_s`` (or at once)."""

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s

    def send_and_receive(self, messages: Iterable[object], *, timeout: float | None = None) -> list[object]:
        list(messages)
        time.sleep(self.wait_s)
        return []


def _message(node: int) -> object:
    return SimpleNamespace(metadata=SimpleNamespace(dst_node_id=node))


def test_a_silent_partner_is_reported_as_timed_out_only_when_the_timeout_ran_out() -> None:
    timed_out = StageGrid(_SilentGrid(0.6), timeout_s=0.6)
    timed_out.send_and_receive([_message(1), _message(2)])
    assert timed_out.missing == {1: "no reply within the stage timeout of 1 s", 2: "no reply within the stage timeout of 1 s"}

    ended_early = StageGrid(_SilentGrid(0.0), timeout_s=30.0)
    ended_early.send_and_receive([_message(7)])
    assert ended_early.missing == {7: "no reply (the exchange ended after 0 s, before the stage timeout of 30 s)"}
