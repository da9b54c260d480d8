"""``flower-supernode`` with short polls and retries: the one place fedcrm changes the SuperNode's behaviour.

Why: in flwr 1.41 the SuperNode's main loop sleeps a fixed 3 s whenever the SuperLink has
no message for it, and 0.5 s between checks for the ClientApp's reply
(``flwr/supernode/start_client_internal.py``: ``time.sleep(3)``, ``time.sleep(0.5)``).
There is no setting for either. A SecAgg+ round is five message exchanges, so the idle
sleep alone adds ~1.5 s on average to every exchange, ~7.5 s per round, far more than the
partner's own work.

The same loop downloads each message's objects from the SuperLink with ``pull_objects``,
which retries an object that is not there yet after 1 s, doubling up to 10 s: the
SuperNode sees a message as soon as the ServerApp pushed it, often before the ServerApp
finished pushing its objects, and on a loaded machine that costs 3–15 s per message
(measured in the workers' task journals).

How: before Flower's own entry point runs, two names inside that one module are
replaced: ``time`` by a proxy whose ``sleep`` sleeps at most ``FEDCRM_SUPERNODE_POLL_S``
seconds (default 0.2; everything else is the real ``time`` module), and ``pull_objects``
by the same function with retries after 0.05 s doubling up to 0.25 s. No other Flower
module is touched. The cost is more frequent polls of the SuperLink while idle (5 per second per
SuperNode instead of 0.33; measured in docs/benchmarks-rounds.md). Remove this module when
Flower makes the interval configurable. Run as
``python -m fedcrm.client.supernode_main <flower-supernode arguments>``.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time as _time
from typing import Any

POLL_ENV = "FEDCRM_SUPERNODE_POLL_S"
DEFAULT_POLL_S = 0.2
#: PID of the ``fedcrm client join`` process; the SuperNode stops itself when it is gone.
PARENT_ENV = "FEDCRM_JOIN_PID"


class CappedSleepTime:
    """The ``time`` module, except that ``sleep`` never waits longer than ``cap_s``."""

    def __init__(self, cap_s: float) -> None:
        if not 0 < cap_s <= 3:
            raise ValueError(f"{POLL_ENV}={cap_s!r}: expected seconds in (0, 3]")
        self.cap_s = cap_s

    def sleep(self, seconds: float) -> None:
        """Sleep ``min(seconds, cap_s)``."""
        _time.sleep(min(seconds, self.cap_s))

    def __getattr__(self, name: str) -> Any:
        return getattr(_time, name)


def poll_interval() -> float:
    """The configured cap (``FEDCRM_SUPERNODE_POLL_S``, default 0.2 s)."""
    raw = os.environ.get(POLL_ENV, str(DEFAULT_POLL_S))
    try:
        return float(raw)
    except ValueError as exc:
        raise SystemExit(f"{POLL_ENV}={raw!r}: expected a number of seconds") from exc


#: Retry delays of the SuperNode's object downloads (Flower's: 1 s doubling to 10 s).
PULL_INITIAL_BACKOFF_S = 0.05
PULL_BACKOFF_CAP_S = 0.25


def patch_supernode_polling(cap_s: float) -> None:
    """Cap the sleeps and object-download retries of Flower's SuperNode main loop (see the module docstring)."""
    import functools

    import flwr.supernode.start_client_internal as loop

    loop.time = CappedSleepTime(cap_s)  # type: ignore[assignment]
    if not isinstance(loop.pull_objects, functools.partial):
        loop.pull_objects = functools.partial(  # type: ignore[assignment]
            loop.pull_objects, initial_backoff=PULL_INITIAL_BACKOFF_S, backoff_cap=PULL_BACKOFF_CAP_S)


def stop_with_parent(pid: int) -> None:
    """SIGTERM this process (Flower's graceful shutdown) once ``pid`` no longer exists.

    ``fedcrm client join`` stops its SuperNode itself; this covers a join that was killed
    (SIGKILL) before it could, so no SuperNode keeps polling for a partner who left.
    """
    def watch() -> None:
        while True:
            _time.sleep(0.5)
            try:
                os.kill(pid, 0)
            except OSError:
                os.kill(os.getpid(), signal.SIGTERM)
                return
    threading.Thread(target=watch, name="fedcrm-parent-watch", daemon=True).start()


def main() -> int:
    """Patch, then run Flower's own ``flower-supernode`` entry point with our arguments."""
    patch_supernode_polling(poll_interval())
    if os.environ.get(PARENT_ENV, "").isdigit():
        stop_with_parent(int(os.environ[PARENT_ENV]))
    from flwr.supernode.cli import flower_supernode

    sys.argv[0] = "flower-supernode"
    flower_supernode()
    return 0


if __name__ == "__main__":
    sys.exit(main())
