"""A Grid that delivers each message to a partner's real ClientApp in this process (no Ray, no SuperNode).

For fast tests of what the coordinator's workflows send and what the partners' ClientApps
(with ``secaggplus_mod`` and the egress journal) send back. Messages are deep-copied in both
directions, as a transport would (``secaggplus_mod`` mutates them). Never a substitute for
the real engines: the federation tests run those.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.serverapp.grid import Grid


class InProcessGrid(Grid):
    """Node ``i + 1`` is the partner whose config is ``configs[i]``; ``app`` is the partners' ClientApp."""

    def __init__(self, app: Any, configs: list[Path]) -> None:
        self.app = app
        self.contexts = {
            i + 1: Context(run_id=1, node_id=i + 1, node_config={"partner-config": str(c)}, state=RecordDict(),
                           run_config={})
            for i, c in enumerate(configs)
        }
        self.sent: list[Message] = []
        self.replies: list[Message] = []
        self.offline: set[int] = set()
        # Flower's Message() reads the process's task identity (set by its runtimes, not here)
        from flwr.supercore.task_identity import TaskIdentity

        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1

    def set_run(self, run: Any) -> None:  # pragma: no cover - not used
        pass

    @property
    def run(self) -> Any:
        return SimpleNamespace(run_id=1)

    def create_message(self, *args: Any, **kwargs: Any) -> Message:  # pragma: no cover - not used
        raise NotImplementedError

    def get_node_ids(self) -> list[int]:
        return sorted(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # pragma: no cover - not used
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # pragma: no cover - not used
        raise NotImplementedError

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            if node in self.offline:
                continue
            incoming = copy.deepcopy(msg)
            incoming.metadata.__dict__["_message_id"] = incoming.object_id
            incoming.metadata.__dict__["_src_node_id"] = 0
            self.sent.append(copy.deepcopy(msg))
            reply = self.app(incoming, self.contexts[node])
            reply.metadata.__dict__["_src_node_id"] = node
            self.replies.append(copy.deepcopy(reply))
            replies.append(copy.deepcopy(reply))
        return replies
