"""A long-lived ClientApp process for a partner's SuperNode (Flower's ``--isolation process``).

Flower's default (``--isolation subprocess``) starts ``flower-superexec`` next to the
SuperNode, and it starts a fresh ``flwr-clientapp`` process for *every message*; in
flwr 1.41 ``flwr-clientapp`` handles exactly one task and exits (``run_clientapp`` ends in
``flwr_exit``). Each such process imports flwr, torch and pandas again and pays torch's
first-optimizer-step cost (``torch.optim`` imports ``torch._dynamo``): measured ~6 s wall
per message on 2 shared cores, about 30 s per SecAgg+ round (5 messages).

With ``--isolation process`` the SuperNode only serves its Runtime API on 127.0.0.1 and
waits for an executor to claim tasks. This module is that executor: one process that
imports everything once, warms torch up once, then loops — claim a ClientApp task, pull
its message, context and FAB through the Runtime API, call the ClientApp (the installed
``fedcrm.client.flower_app``; the FAB names it, nothing is installed at run time), push
the reply and the updated context back. The task protocol is Flower's own
(``flwr.supernode.runtime.run_clientapp``'s ``pull_task_input`` / ``push_message`` /
``push_task_output`` and a heartbeat); only the process lifetime differs, so module-level
caches (the per-round consented view in :mod:`fedcrm.client.partner_session`) live as
long as the SuperNode.

Each task's durations (pull, app load, ClientApp call, push, and the partner's own
load/gate/encode/train/evaluate) are appended to ``$FLWR_HOME/clientapp-tasks.jsonl``
for ``benchmarks/rounds.py``; they hold no data values, only timings and stage names.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import fedcrm._offline as offline

TASKS_FILE = "clientapp-tasks.jsonl"
DEFAULT_POLL_S = 0.1


def warm_up() -> float:
    """Import what every stage needs and run one optimiser step, so the first round pays nothing extra.

    Returns the seconds it took (reported on start-up).
    """
    started = time.perf_counter()
    import numpy as np

    import fedcrm.client.flower_app  # noqa: F401  (flwr, pandas, the consent gate, the ledger)
    from fedcrm.models.nets import build_model
    from fedcrm.models.train import TrainConfig, evaluate, train_local

    x = np.zeros((8, 3), dtype=np.float32)
    y = np.array([0, 1] * 4, dtype=np.float32)
    model = build_model("mlp", 3)
    train_local(model, x, y, TrainConfig(epochs=1, batch_size=4))  # first optimiser step imports torch._dynamo
    evaluate(model, x, y)
    return time.perf_counter() - started


class Worker:
    """Claims and runs the SuperNode's ClientApp tasks one at a time, in this process."""

    def __init__(self, runtime_api_address: str, *, poll_s: float = DEFAULT_POLL_S,
                 tasks_file: Path | None = None) -> None:
        from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
        from flwr.supercore.retry import make_simple_http_retry_invoker
        from flwr.supercore.runtime import RuntimeHttpClient

        self.address = runtime_api_address
        self.poll_s = poll_s
        self.tasks_file = tasks_file
        self.stop = threading.Event()
        self.tasks_run = 0
        self._installed: set[str] = set()
        self._client = RuntimeHttpClient.from_server_address(
            server_address=runtime_api_address, insecure=True, root_certificates=None,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
            retry_invoker=make_simple_http_retry_invoker(),
        )

    def serve(self) -> None:
        """Claim tasks until :attr:`stop` is set."""
        from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
        from flwr.supercore.constant import TaskType

        request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
        try:
            while not self.stop.is_set():
                response = self._client.AcquireTask(request)
                if response.HasField("task") and response.token:
                    self.run_task(response.token)
                    continue  # a round's next message often follows at once
                self.stop.wait(self.poll_s)
        finally:
            self._client.close()

    def run_task(self, token: str) -> None:
        """One ClientApp task, as ``flwr-clientapp --token`` runs it, without leaving the process."""
        from flwr.app import Message
        from flwr.app.error import Error
        from flwr.cli.install import install_from_fab
        from flwr.clientapp.client_app import LoadClientAppError
        from flwr.clientapp.utils import get_load_client_app_fn
        from flwr.common.constant import ErrorCode, SubStatus
        from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
        from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
        from flwr.supercore.retry import make_simple_http_retry_invoker
        from flwr.supercore.runtime import RuntimeHttpClient
        from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

        from fedcrm.client import partner_session

        times: dict[str, Any] = {"started": time.time()}
        client = RuntimeHttpClient.from_server_address(
            server_address=self.address, insecure=True, root_certificates=None,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                          RuntimeTokenHttpInterceptor(token)],
            retry_invoker=make_simple_http_retry_invoker(),
        )
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
        message = reply = context = None
        sub_status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
        partner_session.reset_timings()
        try:
            heartbeat.start()
            t = time.perf_counter()
            message, context, run, fab = pull_task_input(client)
            times["pull_s"] = time.perf_counter() - t
            times["message_type"] = str(message.metadata.message_type)
            times["group_id"] = str(message.metadata.group_id)
            t = time.perf_counter()
            if fab.hash_str not in self._installed:
                install_from_fab(fab.content, skip_prompt=True)
                self._installed.add(fab.hash_str)
            app = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)(
                run.fab_id, run.fab_version, fab.hash_str)
            times["load_s"] = time.perf_counter() - t
            t = time.perf_counter()
            reply = app(message=message, context=context)
            times["call_s"] = time.perf_counter() - t
            sub_status, details = SubStatus.COMPLETED, ""
        except Exception as exc:  # noqa: BLE001 - reported to the SuperLink as the ClientApp's error, as Flower does
            code = ErrorCode.LOAD_CLIENT_APP_EXCEPTION if isinstance(exc, LoadClientAppError) else \
                ErrorCode.CLIENT_APP_RAISED_EXCEPTION
            details = f"{type(exc)}:<'{exc}'>"
            print(f"fedcrm clientapp worker: task failed: {details}", file=sys.stderr, flush=True)
            if message is not None:
                reply = Message(Error(code=code, reason=details), reply_to=message)
        finally:
            t = time.perf_counter()
            try:
                if reply is not None and context is not None:
                    push_message(client, reply, context)
            finally:
                push_task_output(client=client, context=context, sub_status=sub_status, details=details)
                if heartbeat.is_running:
                    heartbeat.stop()
                client.close()
            times["push_s"] = time.perf_counter() - t
            times["work"] = partner_session.timings()
            times["status"] = str(sub_status)
            self.tasks_run += 1
            self._record(times)

    def _record(self, times: dict[str, Any]) -> None:
        if self.tasks_file is None:
            return
        with self.tasks_file.open("a") as handle:
            handle.write(json.dumps(times, default=str) + "\n")


#: Retry delays while the message's objects are still on their way to the SuperNode. The task
#: becomes claimable before the SuperNode has finished downloading the message from the SuperLink,
#: and Flower's defaults (1 s, doubling to 10 s) cost 4-16 s per message on a loaded machine.
PULL_INITIAL_BACKOFF_S = 0.05
PULL_BACKOFF_CAP_S = 0.25


def pull_task_input(client: Any) -> tuple[Any, Any, Any, Any]:
    """Flower's ``run_clientapp.pull_task_input`` with short retry delays (see above)."""
    from flwr.app import Message
    from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
    from flwr.proto.node_pb2 import Node  # pylint: disable=E0611
    from flwr.proto.runtime_pb2 import PullAppMessagesRequest, PullTaskInputRequest  # pylint: disable=E0611
    from flwr.supercore.inflatable.inflatable_protobuf_utils import (
        make_confirm_message_received_fn_protobuf,
        make_pull_object_fn_protobuf,
    )
    from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
    from flwr.supercore.task_identity import TaskIdentity

    res = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id = res.task_id
    TaskIdentity.run_id = res.run.run_id
    TaskIdentity.node_id = res.context.node_id
    context = context_from_proto(res.context)
    run = run_from_proto(res.run)
    fab = fab_from_proto(res.fab)
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("No messages received from Runtime API")
    node = Node(node_id=context.node_id)
    tree = pulled.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree,
        make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node, context.run_id),
        return_type=Message,
        initial_backoff=PULL_INITIAL_BACKOFF_S,
        backoff_cap=PULL_BACKOFF_CAP_S,
    )
    message.metadata.__dict__["_message_id"] = tree.object_id  # the deflated message lacks its own id
    return message, context, run, fab


def _watch_parent(pid: int, stop: threading.Event) -> None:
    """Stop serving when the SuperNode that owns the Runtime API is gone."""
    def watch() -> None:
        while not stop.wait(0.5):
            try:
                os.kill(pid, 0)
            except OSError:
                stop.set()
    threading.Thread(target=watch, daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    """``python -m fedcrm.client.clientapp_worker --runtime-api-address 127.0.0.1:PORT``."""
    parser = argparse.ArgumentParser(prog="fedcrm-clientapp-worker", description=__doc__.split("\n")[0])
    parser.add_argument("--runtime-api-address", required=True, help="the SuperNode's Runtime API, HOST:PORT")
    parser.add_argument("--poll-s", type=float, default=DEFAULT_POLL_S, help="seconds between task claims when idle")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when this process (the SuperNode) exits")
    args = parser.parse_args(argv)
    offline.enforce_offline_environment()
    # One thread: partners' models are small and the machine is shared with the SuperNode.
    import torch

    torch.set_num_threads(1)
    print(f"fedcrm clientapp worker: warmed up in {warm_up():.1f} s", flush=True)
    home = os.environ.get("FLWR_HOME")
    worker = Worker(args.runtime_api_address, poll_s=args.poll_s,
                    tasks_file=Path(home) / TASKS_FILE if home else None)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.stop.set())
    if args.parent_pid is not None:
        _watch_parent(args.parent_pid, worker.stop)
    print(f"fedcrm clientapp worker: serving ClientApp tasks of {args.runtime_api_address}", flush=True)
    worker.serve()
    print(f"fedcrm clientapp worker: stopped after {worker.tasks_run} task(s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
