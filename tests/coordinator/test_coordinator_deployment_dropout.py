"""Faults on Flower's deployment engine: real SuperLink, three `fedcrm client join` processes.

One stack (``flower-superlink`` and a ``fedcrm client join`` per bundled skewed Telco
partner, each a SuperNode with its long-lived ClientApp worker, all on 127.0.0.1) serves
every test of the module, in this order:

1. the operator's ``fedcrm coordinator run --superlink`` is SIGKILLed after round 1's
   checkpoint; its ServerApp carries on under the SuperLink, so ``fedcrm coordinator
   resume`` must stop that Flower run first, then continue with round numbers continuing
   in the registry (C's ClientApp worker is held with SIGSTOP until the orphaned run is
   stopped: on an idle machine it would otherwise finish the remaining rounds first);
2. partner B's SuperNode is SIGKILLed when round 1 starts, with ``min_partners = 2``: the
   run completes, recording B missing with the stage and the reason; B's data team starts
   ``fedcrm client join`` again, its new SuperNode (a new node id: no node
   authentication here) answers the coordinator's hello and takes part under its own name
   again in round 2;
3. with the default (every partner) the same kill fails the run naming B.

Stage timeouts are generous (the machine is a shared 2-core one); a killed SuperNode costs
one stage wait at most, since the SuperLink answers for it once its heartbeats stop.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedcrm.coordinator.deployment import flower_run_ids, flower_run_status, run_deployment
from fedcrm.coordinator.registry import list_runs
from fedcrm.coordinator.run_config import RunConfig
from tests.deploy.stack import Stack, deployment_stack, flower_processes
from tests.federation import TELCO_TASK, copy_partners

pytestmark = pytest.mark.slow

PARTNERS = ("A", "B", "C")
STAGE_TIMEOUT = 240.0  # generous: a loaded 2-core machine; a dead SuperNode is answered for sooner
SECAGG_STAGES = {"setup", "share_keys", "collect_masked_vectors", "unmask"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("deployment-faults")
    # SIGTERM at the end, as Ctrl-C: join stops its SuperNode and worker (SIGINT may be ignored here).
    with deployment_stack(root, copy_partners(root / "partners"), stop_signal=signal.SIGTERM) as stack:
        yield stack
    assert not stack.leftover, stack.leftover
    assert not flower_processes(root), flower_processes(root)


def _config(run_id: str, rounds: int, **extra: object) -> RunConfig:
    return RunConfig.model_validate({"task": TELCO_TASK, "rounds": rounds, "seed": 0, "run_id": run_id,
                                     "stage_timeout": STAGE_TIMEOUT, "connect_timeout": STAGE_TIMEOUT, **extra})


def _events(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == kind]


def _coordinator(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "fedcrm.cli", "coordinator", *args],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"})


def test_coordinator_killed_mid_run_resumes_after_its_serverapp_is_stopped(stack: Stack) -> None:
    runs = stack.root / "runs"
    run_dir = runs / "killed"
    held = 0
    cli = _coordinator(["run", "--superlink", stack.link.address, "--insecure", "--partners", "3",
                        "--task", str(TELCO_TASK), "--rounds", "3", "--seed", "0", "--run-id", "killed",
                        "--runs-dir", str(runs), "--stage-timeout", str(STAGE_TIMEOUT)], stack.root / "run.log")
    try:
        deadline = time.monotonic() + 1200
        while not (run_dir / "checkpoint" / "round-1.json").exists():
            assert cli.poll() is None, (stack.root / "run.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "round 1 never checkpointed"
            time.sleep(0.2)
        # Hold C's ClientApp so the orphaned ServerApp cannot finish the run on its own before the resume
        # stops it (on an idle machine the two remaining rounds take seconds); C's SuperNode stays online.
        held = stack.worker_pid("C")
        os.kill(held, signal.SIGSTOP)
        os.kill(cli.pid, signal.SIGKILL)
        assert cli.wait(timeout=60) == -signal.SIGKILL
    except BaseException:
        if held:
            os.kill(held, signal.SIGCONT)
        raise
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    [first_flower_run] = flower_run_ids(run_dir)
    try:
        assert flower_run_status(run_dir, first_flower_run) in ("starting", "running"), \
            "the killed coordinator's ServerApp should still be running under the SuperLink"
        resume = _coordinator(["resume", str(run_dir)], stack.root / "resume.log")
        deadline = time.monotonic() + 600
        while not flower_run_status(run_dir, first_flower_run).startswith("finished"):
            assert resume.poll() is None, (stack.root / "resume.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the resume never stopped the orphaned Flower run"
            time.sleep(1.0)
    finally:
        os.kill(held, signal.SIGCONT)  # C takes part in the resumed run
    try:
        code = resume.wait(timeout=1800)
    finally:
        if resume.poll() is None:
            resume.kill()
            resume.wait()
    output = (stack.root / "resume.log").read_text()
    assert code == 0, output[-4000:]
    assert "run killed succeeded" in output
    assert flower_run_status(run_dir, first_flower_run) == "finished:stopped"
    first, second = flower_run_ids(run_dir)
    assert first == first_flower_run and flower_run_status(run_dir, second) == "finished:completed"

    status = json.loads((run_dir / "status.json").read_text())
    assert status["outcome"] == "completed" and status["rounds_completed"] == 3, status
    [resumed_from] = status["resumed_from"]
    assert resumed_from >= 1
    rounds = json.loads((run_dir / "metrics" / "rounds.json").read_text())
    assert [r["round"] for r in rounds] == [1, 2, 3], "round numbers continue in the registry"
    for r in rounds[resumed_from:]:  # the resumed rounds ran SecAgg+ with every partner
        assert all(sorted(p) == list(PARTNERS) for p in r["secagg_stages"].values()), r
    [listed] = [r for r in list_runs(runs) if r["run_id"] == "killed"]
    assert listed["outcome"] == "completed" and listed["rounds"] == 3
    assert (run_dir / "model" / "final.safetensors").exists()
    # Nothing of the run's own is left: the killed command's `flwr run` streamer was stopped too.
    assert not flower_processes(run_dir), flower_processes(run_dir)


def test_killed_supernode_with_min_partners_two_is_recorded_and_its_restart_rejoins_by_name(stack: Stack) -> None:
    restarted = threading.Event()
    problems: list[BaseException] = []

    def on_event(event: dict) -> None:
        if event["event"] == "round_start" and event["round"] == 1 and not restarted.is_set():
            restarted.set()
            try:
                stack.kill_supernode("B")
                stack.join("B")  # B's data team starts it again
            except BaseException as exc:  # noqa: BLE001 - reported by the test below
                problems.append(exc)

    result = run_deployment(_config("dropout", rounds=2, min_partners=2), 3, stack.link.address,
                            stack.root / "runs", on_event=on_event, timeout_s=2400)
    assert not problems, problems
    assert restarted.is_set(), "round 1 never started"
    assert result.succeeded, result.error
    r1, r2 = result.rounds
    dropped = [e for e in _events(result.run_dir, "dropout") if e["round"] == 1]
    assert dropped and all(set(e["partners"]) == {"B"} for e in dropped), dropped
    assert dropped[0]["stage"] in SECAGG_STAGES, dropped
    assert all(sorted(p) == ["A", "C"] for p in r1["secagg_stages"].values()), r1
    assert "B" in r1["missing"][dropped[0]["stage"]]
    # B's new SuperNode said who it is; it takes part under its own name, never as "node N".
    [rejoin] = _events(result.run_dir, "rejoin")
    assert rejoin["partner"] == "B"
    assert all(sorted(p) == list(PARTNERS) for p in r2["secagg_stages"].values()), r2
    assert sorted(r2["fit"]) == list(PARTNERS) and sorted(r2["evaluate"]) == list(PARTNERS), r2
    assert not any("node" in name for r in result.rounds for name in [*r["fit"], *r["evaluate"]])
    status = json.loads((result.run_dir / "status.json").read_text())
    assert status["outcome"] == "completed" and status["rounds_completed"] == 2
    assert (result.run_dir / "model" / "final.safetensors").exists()


def test_by_default_a_killed_supernode_fails_the_run_naming_it(stack: Stack) -> None:
    killed = threading.Event()

    def on_event(event: dict) -> None:
        if event["event"] == "round_start" and not killed.is_set():
            killed.set()
            stack.kill_supernode("B")

    result = run_deployment(_config("strict", rounds=1), 3, stack.link.address, stack.root / "runs",
                            on_event=on_event, timeout_s=2400)
    assert killed.is_set()
    assert not result.succeeded
    assert "round 1 failed at stage" in (result.error or "") and "partner(s) B" in (result.error or ""), result.error
    status = json.loads((result.run_dir / "status.json").read_text())
    assert status["outcome"] == "failed" and status["rounds_completed"] == 0
    assert not (result.run_dir / "model" / "final.safetensors").exists()
