"""A Grid that waits for replies with a short poll instead of Flower's fixed 3 s sleep.

In flwr 1.41 the deployment engine's ``HttpGrid.send_and_receive`` sleeps a fixed 3 s
between pulls for replies (``flwr/superlink/grid/http_grid.py``), with no setting; every
SecAgg+ stage and every evaluation waits on it, ~1.5 s on average per exchange, ~7.5 s
per round. :class:`ResponsiveGrid` wraps whatever Grid Flower hands the ServerApp and
implements ``send_and_receive`` with Flower's own public ``push_messages`` /
``pull_messages`` and a short sleep; every other call goes straight to the wrapped grid.
The simulation engine's in-memory grid already polls every 0.1 s, so there the wrapper
changes nothing measurable.

Replies are downloaded by the wrapped grid's ``pull_messages``, which retries an object
that is not on the SuperLink yet after 1 s, doubling up to 10 s (``pull_objects``); a
SuperNode's reply is visible before all its objects are uploaded, so on a loaded machine
that wait is seconds per exchange. With a short poll the deployment grid's module uses
``pull_objects`` with retries after 0.05 s doubling up to 0.25 s (:func:`short_object_retries`,
the one patch on this side).

``FEDCRM_GRID_POLL_S`` (default 0.1) sets the interval; ``3`` reproduces Flower's stock
behaviour (3 s sleeps, stock retries) for comparisons (``benchmarks/rounds.py``).

``FEDCRM_GRID_JOURNAL`` (a file path, unset by default) appends one JSON line per exchange:
message type, number of messages, wall-clock start, and seconds to push, to the first reply and
to the last one. It holds no message content; ``benchmarks/rounds.py`` uses it to split a round
into coordinator work (between exchanges) and waiting for partners.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Iterable
from typing import Any

from flwr.app import Message
from flwr.serverapp.grid import Grid

POLL_ENV = "FEDCRM_GRID_POLL_S"
JOURNAL_ENV = "FEDCRM_GRID_JOURNAL"
DEFAULT_POLL_S = 0.1
STOCK_POLL_S = 3.0
PULL_INITIAL_BACKOFF_S = 0.05
PULL_BACKOFF_CAP_S = 0.25


def short_object_retries() -> None:
    """Make the deployment grid retry a reply's missing objects after 0.05-0.25 s, not 1-10 s."""
    from flwr.superlink.grid import http_grid

    if not isinstance(http_grid.pull_objects, functools.partial):
        http_grid.pull_objects = functools.partial(  # type: ignore[assignment]
            http_grid.pull_objects, initial_backoff=PULL_INITIAL_BACKOFF_S, backoff_cap=PULL_BACKOFF_CAP_S)


def poll_interval() -> float:
    """Seconds between pulls for replies (``FEDCRM_GRID_POLL_S``, default 0.1)."""
    raw = os.environ.get(POLL_ENV, str(DEFAULT_POLL_S))
    try:
        value = float(raw)
    except ValueError as exc:
        raise ValueError(f"{POLL_ENV}={raw!r}: expected a number of seconds") from exc
    if not 0 < value <= 10:
        raise ValueError(f"{POLL_ENV}={raw!r}: expected seconds in (0, 10]")
    return value


class ResponsiveGrid(Grid):
    """Delegates to ``inner``; ``send_and_receive`` polls every ``poll_s`` seconds."""

    def __init__(self, inner: Grid, poll_s: float | None = None) -> None:
        self._inner = inner
        self.poll_s = poll_interval() if poll_s is None else poll_s
        if self.poll_s < STOCK_POLL_S:
            short_object_retries()

    # -- Grid's abstract interface, delegated ---------------------------------------------
    def set_run(self, run: Any) -> None:  # noqa: D102
        self._inner.set_run(run)

    @property
    def run(self):  # type: ignore[no-untyped-def]  # noqa: ANN201, D102
        return self._inner.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:  # noqa: D102
        return self._inner.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:  # noqa: D102
        return self._inner.get_node_ids()

    def get_nodes(self) -> Iterable[Any]:  # noqa: D102
        return self._inner.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # noqa: D102
        return self._inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # noqa: D102
        return self._inner.pull_messages(message_ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    # -- the one behaviour that differs ---------------------------------------------------
    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Push ``messages``, then pull replies until all arrived or ``timeout`` passed (as Flower's)."""
        messages = list(messages)
        started_wall, started = time.time(), time.monotonic()
        pending = set(self.push_messages(messages))
        pushed = time.monotonic()
        deadline = None if timeout is None else started + timeout
        replies: list[Message] = []
        first_reply: float | None = None
        while pending:
            pulled = list(self.pull_messages(pending))
            if pulled and first_reply is None:
                first_reply = time.monotonic()
            replies.extend(pulled)
            pending.difference_update(m.metadata.reply_to_message_id for m in pulled)
            if not pending:
                break
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                time.sleep(min(self.poll_s, remaining))
            else:
                time.sleep(self.poll_s)
        self._journal(messages, replies, started_wall, started, pushed, first_reply)
        return replies

    @staticmethod
    def _journal(messages: list[Message], replies: list[Message], started_wall: float, started: float,
                 pushed: float, first_reply: float | None) -> None:
        path = os.environ.get(JOURNAL_ENV)
        if not path:
            return
        done = time.monotonic()
        entry = {
            "message_type": str(messages[0].metadata.message_type) if messages else "",
            "group_id": str(messages[0].metadata.group_id) if messages else "",
            "messages": len(messages), "replies": len(replies), "started": started_wall,
            "push_s": pushed - started,
            "first_reply_s": None if first_reply is None else first_reply - started,
            "last_reply_s": done - started,
        }
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")


def responsive(grid: Grid) -> Grid:
    """``grid`` wrapped in :class:`ResponsiveGrid` (once)."""
    return grid if isinstance(grid, ResponsiveGrid) else ResponsiveGrid(grid)
