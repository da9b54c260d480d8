"""The simulation engine: runs one planned federation on Flower's simulation runtime (Ray).

Runs in its own process (``python -m fedcrm.coordinator.engine PLAN PARTNER...``), started
by :mod:`fedcrm.coordinator.runner` in a new session so that every process it spawns can
be found and stopped. The ServerApp and ClientApp are loaded by Flower's own app loader
from module references (the coordinator never imports the client package); each
partner's config path is placed unread in the run config under
``partner-config-<partition-id>``, because Flower's simulation node config holds only the
partition id.

Flower's public ``run_simulation`` passes an empty run config and ``flwr run`` needs a
separate SuperLink, so this module calls the simulation runtime's ``_run_simulation``
with an app directory, exactly as Flower's own ``flwr-simulation`` does. That function
is private: the flwr range in pyproject (``<1.43``) pins the API it relies on, and
tests/coordinator exercise it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

CLIENT_APP_REF = "fedcrm.client.flower_app:app"
PLAIN_CLIENT_APP_REF = "fedcrm.client.flower_app:plain_app"
SERVER_APP_REF = "fedcrm.coordinator.server_app:app"
#: Where every process of a simulation listens (tests/test_listen_loopback.py checks it).
LOOPBACK = "127.0.0.1"
#: Ray 2.55 turns a node IP of 127.0.0.1 back into the machine's interface address
#: (``services.resolve_ip_for_localhost``) and then binds GCS, raylet and workers to every
#: interface (``*:PORT``, measured with ``ss -ltnp``). With this flag off (Ray's own setting
#: for single-machine clusters, the default on macOS/Windows) the node IP stays loopback and
#: every Ray server binds 127.0.0.1 (measured).
RAY_LOOPBACK_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    # The raylet aborts ("Check failed" in WaitForDashboardAgentPorts) when its agents take longer
    # than this to report their ports; on a loaded 2-core machine they took 30 s+ (seen in tests).
    "RAY_agent_register_timeout_ms": "180000",
}


#: Ray actors (ClientApp workers) the simulation keeps; each serves one partner's message at a time
#: (default: one per CPU core). Flower sizes its actor pool as CPUs / client ``num_cpus``.
ACTORS_VAR = "FEDCRM_SIM_ACTORS"
#: What the engine ran with (Ray CPUs, client resources, actors), written into the run directory.
SIMULATION_RESOURCES_FILE = "simulation_resources.json"


def simulation_actors(cpus: int, actors: str | None) -> int:
    """How many Ray actors the simulation runs on ``cpus`` cores: ``actors`` if given, else one per core.

    The engine gives Ray that many logical CPUs and every ClientApp one, so Flower's pool
    (``int(CPUs / client num_cpus)``) holds exactly this many actors. More actors than
    cores only time-share the cores and each holds its own torch and the partners' views
    it served; fewer leave cores idle (measured in ``benchmarks/scale_partners.py``).
    """
    from fedcrm.errors import ConfigError

    if actors is None or actors.strip() == "":
        return cpus
    try:
        count = int(actors)
    except ValueError:
        raise ConfigError(f"{ACTORS_VAR}={actors!r}: expected a whole number of Ray actors (1 or more)") from None
    if not 1 <= count <= 8 * cpus:  # more only time-share the cores, each with its own copy of torch
        raise ConfigError(f"{ACTORS_VAR}={actors!r}: expected 1 to {8 * cpus} Ray actors ({cpus} CPU cores)")
    return count


def write_app_dir(run_dir: Path, plan_path: Path, partner_configs: list[Path], client_ref: str) -> Path:
    """Write the Flower app directory (pyproject with components and run config)."""
    app_dir = run_dir / "flower_app"
    app_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Written by fedcrm for one run; Flower reads components and run config from here.",
        "[project]",
        'name = "fedcrm-run"',
        'version = "1.0.0"',
        "",
        "[tool.flwr.app]",
        'publisher = "fedcrm"',
        "",
        "[tool.flwr.app.components]",
        f'serverapp = "{SERVER_APP_REF}"',
        f'clientapp = "{client_ref}"',
        "",
        "[tool.flwr.app.config]",
        f'fedcrm-plan = "{plan_path}"',
    ]
    lines += [f'partner-config-{i} = "{p}"' for i, p in enumerate(partner_configs)]
    (app_dir / "pyproject.toml").write_text("\n".join(lines) + "\n")
    return app_dir


def run_engine(plan_path: Path, partner_configs: list[Path]) -> None:
    """Run the planned federation in this process (Ray is started and stopped here)."""
    from fedcrm import _offline

    _offline.enforce_offline_environment()
    os.environ.update(RAY_LOOPBACK_ENV)  # read by Ray when it is imported, inherited by its processes
    from flwr.app import Context, RecordDict
    from flwr.common import EventType
    from flwr.simulation.run_simulation import _run_simulation

    from fedcrm.coordinator.run_config import RunPlan
    from fedcrm.coordinator.server_app import PLAN_KEY

    plan = RunPlan.load(plan_path)
    client_ref = CLIENT_APP_REF if plan.config.aggregation == "secagg" else PLAIN_CLIENT_APP_REF
    app_dir = write_app_dir(plan.run_dir, plan_path, partner_configs, client_ref)
    run_config: dict[str, str] = {PLAN_KEY: str(plan_path)}
    cpus = max(1, os.cpu_count() or 1)
    actors = simulation_actors(cpus, os.environ.get(ACTORS_VAR))
    client_resources = {"num_cpus": 1, "num_gpus": 0.0}
    (plan.run_dir / SIMULATION_RESOURCES_FILE).write_text(json.dumps(
        {"cpu_cores": cpus, "ray_num_cpus": actors, "actors": actors, "client_resources": client_resources},
        indent=2) + "\n")
    backend_config = {
        "init_args": {
            "num_cpus": actors,  # logical CPUs: one per actor (Flower's pool size), see simulation_actors
            "logging_level": "warning",
            "log_to_driver": False,
            "include_dashboard": False,
            "_temp_dir": os.environ["RAY_TMPDIR"],
            # Ray binds its gRPC servers (GCS, raylet, object manager, agents, workers) to the node IP
            # (with RAY_LOOPBACK_ENV set, this one is kept as given): keep the cluster on loopback.
            "_node_ip_address": LOOPBACK,
            "dashboard_host": LOOPBACK,
            # Ray's dashboard head always takes 8265 unless told otherwise: two runs on one machine
            # (measured: tests of several sessions at once) then fight over it while Ray starts.
            "dashboard_port": _free_loopback_port(),
        },
        "client_resources": client_resources,
    }
    # Flower creates the Run itself (run=None); the ServerApp reads its settings from this context.
    server_context = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
    _run_simulation(
        num_supernodes=plan.num_partners,
        exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
        client_app_attr=client_ref,
        server_app_attr=SERVER_APP_REF,
        backend_name="ray",
        backend_config=backend_config,  # type: ignore[arg-type]
        app_dir=str(app_dir),
        server_app_context=server_context,
        is_app=True,
    )


def _free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    import socket

    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def main(argv: list[str]) -> int:
    """Process entry: ``engine PLAN PARTNER_CONFIG...``; exit 0 on success, 2 on a failed run, 3 if abandoned.

    Whatever happens, the engine ends the run itself (see :mod:`fedcrm.coordinator.lifecycle`):
    it stops every process of the run, removes Ray's temp directory and finalises the run
    directory (status, report, manifest) — also when the coordinator that started it is killed.
    """
    import time

    from fedcrm.coordinator.lifecycle import ParentGuard, finish_run
    from fedcrm.coordinator.processes import MARKER_VAR
    from fedcrm.errors import FedcrmError

    started = time.monotonic()
    plan_path, partners = Path(argv[0]), [Path(p) for p in argv[1:]]
    guard = ParentGuard(plan_path.parent, started).start()
    error: str | None = None
    try:
        run_engine(plan_path, partners)
    except Exception as exc:  # noqa: BLE001 - report the root cause, whatever layer wrapped it
        cause = _fedcrm_cause(exc, FedcrmError)
        error = str(cause if cause is not None else exc)
        print(f"fedcrm: run failed: {error}", file=sys.stderr)
    if not guard.finishing():  # the run is being abandoned by the parent guard, which exits the process
        while True:
            time.sleep(1.0)
    if error is not None and ray_failed_to_start(plan_path.parent / "engine.log"):
        restart_after_failed_ray_start(argv)  # returns only when out of attempts
    if error is not None:
        (plan_path.parent / "failure.txt").write_text(error + "\n")
    tmp = os.environ.get("RAY_TMPDIR")
    finish_run(plan_path.parent, outcome="completed" if error is None else "failed", error=error,
               wall_s=time.monotonic() - started, marker=os.environ.get(MARKER_VAR),
               ray_tmp=Path(tmp) if tmp else None)
    return 0 if error is None else 2


RAY_START_ATTEMPTS = 3
ATTEMPT_VAR = "FEDCRM_ENGINE_ATTEMPT"
LOG_OFFSET_VAR = "FEDCRM_ENGINE_LOG_OFFSET"
RAY_START_FAILURES = ("The current node timed out during startup", "Timed out waiting for file")


def ray_failed_to_start(engine_log: Path) -> bool:
    """Whether this attempt failed because Ray's node did not come up (in this attempt's part of the log).

    On a loaded machine Ray's raylet gives up after a fixed wait (30 s for the node, ~15 s for
    its agent's port file; measured at load averages of 12-20 on 2 cores), before any partner
    connected. Nothing of the run has happened yet then, so the engine may simply start again.
    """
    try:
        with engine_log.open("rb") as handle:
            handle.seek(int(os.environ.get(LOG_OFFSET_VAR, "0")))
            text = handle.read().decode(errors="replace")
    except OSError:
        return False
    return any(marker in text for marker in RAY_START_FAILURES)


def restart_after_failed_ray_start(argv: list[str]) -> None:
    """Stop the failed attempt's Ray processes, clear Ray's temp directory and exec the engine again.

    The process keeps its PID, parent, session and the inherited parent pipe, so the parent
    guard and the coordinator's supervision carry on. Returns if the attempts are used up.
    """
    from fedcrm._offline import write_ray_bootstrap_config
    from fedcrm.coordinator.lifecycle import copy_ray_logs
    from fedcrm.coordinator.processes import MARKER_VAR, stop_marked

    attempt = int(os.environ.get(ATTEMPT_VAR, "1"))
    if attempt >= RAY_START_ATTEMPTS:
        return
    plan_path = Path(argv[0])
    print(f"fedcrm: Ray's node did not start (attempt {attempt} of {RAY_START_ATTEMPTS}); starting the engine again",
          file=sys.stderr)
    marker = os.environ.get(MARKER_VAR)
    if marker:
        stop_marked(marker, grace_s=3.0)
    tmp = Path(os.environ["RAY_TMPDIR"])
    copy_ray_logs(tmp, plan_path.parent / "ray_logs")
    for entry in tmp.iterdir():
        if entry.name != "home":
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    write_ray_bootstrap_config(tmp / "home")
    sys.stdout.flush()
    sys.stderr.flush()
    os.environ[ATTEMPT_VAR] = str(attempt + 1)
    os.environ[LOG_OFFSET_VAR] = str((plan_path.parent / "engine.log").stat().st_size)
    os.execv(sys.executable, [sys.executable, "-m", "fedcrm.coordinator.engine", *argv])


def _fedcrm_cause(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first fedcrm error in an exception's cause/context chain (Flower wraps them)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
