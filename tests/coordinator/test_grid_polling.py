"""Short polls instead of Flower's fixed 3 s sleeps: the grid wrapper and the SuperNode's sleep cap."""

from __future__ import annotations

from typing import Any

import pytest
from flwr.app import Message, RecordDict
from flwr.serverapp.grid import Grid

import fedcrm.client.supernode_main as supernode_main
import fedcrm.coordinator.grid_polling as grid_polling
from fedcrm.coordinator.grid_polling import ResponsiveGrid, poll_interval, responsive


class ScriptedGrid(Grid):
    """Replies to message i after ``delays[i]`` pulls; records every call."""

    def __init__(self, delays: list[int]) -> None:
        self.delays = delays
        self.pulls = 0
        self.calls: list[str] = []
        self._sent: list[Message] = []

    def set_run(self, run: Any) -> None:
        self.calls.append("set_run")

    @property
    def run(self) -> Any:
        return "the-run"

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        raise NotImplementedError

    def get_node_ids(self) -> list[int]:
        self.calls.append("get_node_ids")
        return [1, 2, 3]

    def push_messages(self, messages: Any) -> list[str]:
        self._sent = list(messages)
        return [str(i) for i in range(len(self._sent))]

    def pull_messages(self, message_ids: Any) -> list[Message]:
        self.pulls += 1
        ready = []
        for mid in message_ids:
            if self.pulls >= self.delays[int(mid)]:
                reply = Message(RecordDict(), dst_node_id=0, message_type="query")
                reply.metadata.__dict__["_reply_to_message_id"] = mid
                ready.append(reply)
        return ready

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Message]:
        raise AssertionError("the wrapper must not call the inner grid's send_and_receive (it sleeps 3 s)")


@pytest.fixture(autouse=True)
def _restore_flower(monkeypatch: pytest.MonkeyPatch) -> None:
    """The patches under test change module globals of Flower: put them back after each test."""
    import flwr.supernode.start_client_internal as loop
    from flwr.superlink.grid import http_grid

    monkeypatch.setattr(loop, "pull_objects", loop.pull_objects)
    monkeypatch.setattr(loop, "time", loop.time)
    monkeypatch.setattr(http_grid, "pull_objects", http_grid.pull_objects)


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower stamps new messages with the current task's run and node ids."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value, raising=False)


def _messages(n: int) -> list[Message]:
    return [Message(RecordDict(), dst_node_id=i + 1, message_type="query") for i in range(n)]


def test_send_and_receive_collects_every_reply_with_short_sleeps(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(grid_polling.time, "sleep", slept.append)
    inner = ScriptedGrid([1, 3, 2])
    replies = list(ResponsiveGrid(inner, poll_s=0.05).send_and_receive(_messages(3), timeout=None))
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["0", "1", "2"]
    assert inner.pulls == 3 and slept == [0.05, 0.05]


def test_timeout_returns_what_arrived() -> None:
    inner = ScriptedGrid([1, 10**9])
    replies = list(ResponsiveGrid(inner, poll_s=0.01).send_and_receive(_messages(2), timeout=0.1))
    assert [r.metadata.reply_to_message_id for r in replies] == ["0"]


def test_everything_else_is_delegated_and_wrapping_is_idempotent() -> None:
    inner = ScriptedGrid([1])
    grid = responsive(inner)
    grid.set_run("r")
    assert list(grid.get_node_ids()) == [1, 2, 3] and grid.run == "the-run"
    assert [n.node_id for n in grid.get_nodes()] == [1, 2, 3]
    assert responsive(grid) is grid and inner.calls == ["set_run", "get_node_ids", "get_node_ids"]


def test_poll_interval_setting_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(grid_polling.POLL_ENV, "3")
    assert poll_interval() == 3.0
    for bad in ("0", "-1", "soon"):
        monkeypatch.setenv(grid_polling.POLL_ENV, bad)
        with pytest.raises(ValueError, match=grid_polling.POLL_ENV):
            poll_interval()


def test_supernode_sleeps_are_capped_in_flowers_main_loop_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import flwr.supernode.start_client_internal as loop

    slept: list[float] = []
    monkeypatch.setattr(supernode_main._time, "sleep", slept.append)
    supernode_main.patch_supernode_polling(0.2)
    loop.time.sleep(3)  # the idle poll in start_client_internal
    loop.time.sleep(0.05)
    assert slept == [0.2, 0.05]
    assert loop.time.monotonic() > 0  # the rest of `time` is the real module
    with pytest.raises(ValueError, match=supernode_main.POLL_ENV):
        supernode_main.CappedSleepTime(0)


def test_object_downloads_retry_quickly_on_both_sides_unless_stock(monkeypatch: pytest.MonkeyPatch) -> None:
    import flwr.supernode.start_client_internal as loop
    from flwr.superlink.grid import http_grid

    ResponsiveGrid(ScriptedGrid([1]), poll_s=grid_polling.STOCK_POLL_S)  # stock: Flower's own retries
    assert http_grid.pull_objects.__name__ == "pull_objects"
    ResponsiveGrid(ScriptedGrid([1]), poll_s=0.1)
    supernode_main.patch_supernode_polling(0.2)
    supernode_main.patch_supernode_polling(0.2)  # idempotent
    for patched in (http_grid.pull_objects, loop.pull_objects):
        assert patched.keywords == {"initial_backoff": 0.05, "backoff_cap": 0.25}
        assert patched.func.__name__ == "pull_objects"
