"""``flower-superlink`` with a longer start-up window for the ServerApp: the one change fedcrm makes to it.

Why: in flwr 1.41 the SuperLink's superexec claims a run's task and starts
``flwr-serverapp`` with the task's token; the token expires unless the new process calls
the SuperLink within ``HEARTBEAT_DEFAULT_INTERVAL`` (30 s) of the claim, and a running
task whose heartbeats stop for 2 × 30 s is failed. There is no setting for either. The new
process spends those seconds importing Flower (about 5 s of CPU before its first call);
on a loaded 2-core machine that took 31 s of wall time (measured in the compose test:
every run then failed before the ServerApp started, with the token expired).

How: before Flower's own entry point runs, the one constant is replaced inside the two
modules that keep task tokens (``flwr.supercore.corestate.sql_corestate`` and
``in_memory_corestate``; the constant is bound there at import) by
``FEDCRM_TASK_HEARTBEAT_S`` (default 120 s). SuperNode heartbeats are untouched (each
SuperNode sends its own interval). The cost: a ServerApp that died without a word is
noticed after 2 × 120 s instead of 2 × 30 s; a run stopped by ``flwr stop`` or a
finished one is not affected. Remove this module when Flower makes the window configurable.
Run as ``python -m fedcrm.coordinator.superlink_main <flower-superlink arguments>``.
"""

from __future__ import annotations

import os
import sys

HEARTBEAT_ENV = "FEDCRM_TASK_HEARTBEAT_S"
DEFAULT_TASK_HEARTBEAT_S = 120
#: The modules that read ``HEARTBEAT_DEFAULT_INTERVAL`` for task tokens (claim, activation, heartbeats).
TOKEN_MODULES = ("flwr.supercore.corestate.sql_corestate", "flwr.supercore.corestate.in_memory_corestate")


def task_heartbeat_s() -> int:
    """The configured window (``FEDCRM_TASK_HEARTBEAT_S``, default 120 s), checked."""
    raw = os.environ.get(HEARTBEAT_ENV, str(DEFAULT_TASK_HEARTBEAT_S))
    try:
        value = int(raw)
    except ValueError as exc:
        raise SystemExit(f"{HEARTBEAT_ENV}={raw!r}: expected whole seconds") from exc
    if not 30 <= value <= 1800:
        raise SystemExit(f"{HEARTBEAT_ENV}={value}: expected 30 to 1800 seconds (Flower's own bounds)")
    return value


def patch_task_heartbeat(seconds: int) -> None:
    """Give task tokens ``seconds`` instead of Flower's 30 s (see the module docstring)."""
    import importlib

    for name in TOKEN_MODULES:
        module = importlib.import_module(name)
        if not hasattr(module, "HEARTBEAT_DEFAULT_INTERVAL"):
            raise SystemExit(f"{name} has no HEARTBEAT_DEFAULT_INTERVAL: this Flower version needs "
                             "fedcrm.coordinator.superlink_main updated")
        module.HEARTBEAT_DEFAULT_INTERVAL = seconds  # type: ignore[attr-defined]


def main() -> int:
    """Patch, then run Flower's own ``flower-superlink`` entry point with our arguments."""
    patch_task_heartbeat(task_heartbeat_s())
    from flwr.superlink.cli import flower_superlink

    sys.argv[0] = "flower-superlink"
    flower_superlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
