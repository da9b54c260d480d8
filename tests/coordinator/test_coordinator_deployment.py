"""A real deployment run: a SuperLink, three partners joining with `fedcrm client join`, SecAgg+.

Everything is a real process on 127.0.0.1 with free ports: ``flower-superlink`` started by
``fedcrm.coordinator.superlink``, one ``fedcrm client join`` per bundled skewed Telco
partner (each starting its own SuperNode in process-isolation mode and one long-lived
ClientApp worker), and ``flwr run`` submitted by
``run_deployment``. Afterwards no process of the run may be left: every process whose
environment points Flower's state (``FLWR_HOME``) into this test's directory is found in
the process table during the run and must be gone after it.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedcrm.cli import app
from fedcrm.coordinator.deployment import run_deployment
from fedcrm.coordinator.run_config import RunConfig
from fedcrm.coordinator.superlink import free_port
from fedcrm.paths import DATASETS
from tests.deploy.stack import deployment_stack, flower_processes
from tests.federation import copy_partners

PARTNERS = ("A", "B", "C")
SECAGG_STAGES = {"setup", "share_keys", "collect_masked_vectors", "unmask"}


def test_join_refuses_to_start_without_the_partner_key(tmp_path: Path) -> None:
    pdir = tmp_path / "A"
    shutil.copytree(DATASETS / "partners" / "telco" / "skewed" / "A", pdir)  # not initialised: no key
    result = CliRunner().invoke(app, ["client", "join", "--config", str(pdir / "partner.toml"),
                                      "--superlink", f"127.0.0.1:{free_port()}", "--insecure"])
    assert result.exit_code == 1
    assert "partner.key" in result.output and "fedcrm client init" in result.output
    assert not flower_processes(tmp_path)


def test_join_needs_exactly_one_of_insecure_or_a_ca(tmp_path: Path) -> None:
    pdir = tmp_path / "A"
    shutil.copytree(DATASETS / "partners" / "telco" / "skewed" / "A", pdir)
    assert CliRunner().invoke(app, ["client", "init", "--config", str(pdir / "partner.toml")]).exit_code == 0
    result = CliRunner().invoke(app, ["client", "join", "--config", str(pdir / "partner.toml"),
                                      "--superlink", "127.0.0.1:9"])
    assert result.exit_code == 1 and "--insecure" in result.output
    assert not flower_processes(tmp_path)


@pytest.mark.slow
def test_three_partners_join_a_real_superlink_and_finish_a_secagg_round(tmp_path: Path) -> None:
    started = time.monotonic()
    configs = copy_partners(tmp_path / "partners", names=PARTNERS)
    assert not flower_processes(tmp_path)

    with deployment_stack(tmp_path, configs) as stack:
        cfg = RunConfig.model_validate({"task": DATASETS / "tasks" / "telco_churn.yaml", "rounds": 1, "seed": 0,
                                        "run_id": "deploy-1"})
        seen: dict[int, str] = {}
        done = threading.Event()

        def watch() -> None:  # the serverapp lives for the run only: sample often
            while not done.is_set():
                seen.update(flower_processes(tmp_path))
                time.sleep(0.2)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            result = run_deployment(cfg, len(configs), stack.link.address, tmp_path / "runs", timeout_s=500)
        finally:
            done.set()
            watcher.join()
        assert result.succeeded, result.error
        for join in stack.joins.values():
            assert join.poll() is None, "a SuperNode left before it was told to"
        codes = stack.stop_joins(signal.SIGINT)  # Ctrl-C
    elapsed = time.monotonic() - started
    print(f"deployment test: 1 SecAgg+ round, 3 SuperNodes, {elapsed:.1f} s end to end "
          f"(run {result.wall_s:.1f} s)")

    assert codes == [0, 0, 0]
    assert not stack.leftover
    # The run: a final model and every SecAgg+ stage completed by every partner in round 1.
    run_dir = result.run_dir
    assert (run_dir / "model" / "final.safetensors").exists() and (run_dir / "manifest.json").exists()
    [round_1] = result.rounds
    assert set(round_1["secagg_stages"]) == SECAGG_STAGES
    for stage, partners in round_1["secagg_stages"].items():
        assert sorted(partners) == sorted(PARTNERS), stage
    assert "roc_auc" in round_1["federated"]
    # The coordinator never learnt where the partners' files are.
    app_config = (run_dir / "flower_app" / "pyproject.toml").read_text()
    assert "partner-config" not in app_config and str(tmp_path / "partners") not in app_config
    # Processes: the scan saw SuperLink, SuperNodes and app processes during the run; none is left.
    commands = " ".join(seen.values())
    for program in ("fedcrm.coordinator.superlink_main", "fedcrm.client.supernode_main", "flwr-serverapp",
                    "fedcrm.client.clientapp_worker"):
        assert program in commands, f"{program} was never seen in the process table"
    assert not flower_processes(tmp_path), flower_processes(tmp_path)
    assert all(not Path(f"/proc/{pid}").exists() or flower_processes(tmp_path).get(pid) is None for pid in seen)
    # The SuperLink kept its state in memory (coordinator/superlink.py): no state database on disk.
    assert not os.path.exists(tmp_path / "superlink" / "state.db")
