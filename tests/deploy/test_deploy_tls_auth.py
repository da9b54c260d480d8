"""TLS and SuperNode authentication on real Flower processes.

A SuperLink with certificates from ``fedcrm certs`` and ``--enable-supernode-auth``; the
operator registers partners A, B, C with ``fedcrm coordinator partners add`` (Flower's
``flwr supernode register``); a partner whose key was never registered and a bare
SuperNode with no key at all are refused, and both refusals are logged with the key's
fingerprint; then A, B, C join over TLS with their node keys and finish a SecAgg+ round.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedcrm._offline import OFFLINE_ENV
from fedcrm.certs import issue
from fedcrm.cli import app
from fedcrm.coordinator.deployment import run_deployment
from fedcrm.coordinator.link_security import RefusalWatcher, refusals_in_log
from fedcrm.coordinator.partners import read_registry
from fedcrm.coordinator.processes import stop_processes
from fedcrm.coordinator.run_config import RunConfig
from fedcrm.coordinator.superlink import free_port, venv_bin
from fedcrm.node_keys import fingerprint, load_private_key
from fedcrm.paths import DATASETS
from tests.deploy.stack import deployment_stack, flower_processes
from tests.federation import copy_partners

SECAGG_STAGES = {"setup", "share_keys", "collect_masked_vectors", "unmask"}
WIDE = {"COLUMNS": "400"}  # rich must not wrap fingerprints in captured output


def node_fingerprint(config: Path) -> str:
    return fingerprint(load_private_key(config.parent / "node.key").public_key())


@pytest.mark.slow
def test_tls_authenticated_secagg_round_and_unregistered_or_keyless_nodes_refused(tmp_path: Path) -> None:
    started = time.monotonic()
    configs = copy_partners(tmp_path / "partners")
    [stranger] = copy_partners(tmp_path / "stranger", names=("A",))  # same data, its own key, never registered
    issue(tmp_path / "tls", ["127.0.0.1"])
    ca = tmp_path / "tls" / "ca.pem"
    registry = tmp_path / "partners.json"
    with deployment_stack(tmp_path, configs, join=False, root_certificates=ca, tls_dir=tmp_path / "tls",
                          node_auth=True) as stack:
        link = stack.link
        watcher = RefusalWatcher(link.state_dir / "superlink.log", interval_s=0.5)
        for config in configs:
            name = config.parent.name
            added = CliRunner().invoke(app, ["coordinator", "partners", "add", name, str(config.parent / "node.key.pub"),
                                             "--superlink", link.address, "--root-certificates", str(ca),
                                             "--registry", str(registry)], env=WIDE)
            assert added.exit_code == 0, added.output
            assert node_fingerprint(config) in added.output
        again = CliRunner().invoke(app, ["coordinator", "partners", "add", "A2", str(configs[0].parent / "node.key.pub"),
                                         "--superlink", link.address, "--root-certificates", str(ca),
                                         "--registry", str(registry)], env=WIDE)
        assert again.exit_code == 1 and "already registered for partner A" in again.output

        # A partner whose key the operator never registered: refused, told its fingerprint.
        env = {**os.environ, **WIDE}
        refused = subprocess.run([sys.executable, "-m", "fedcrm.cli", "client", "join", "--config", str(stranger),
                                  "--superlink", link.address, "--port", str(free_port()),
                                  "--root-certificates", str(ca)],
                                 capture_output=True, text=True, timeout=180, env=env)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert node_fingerprint(stranger) in refused.stdout and "not registered" in refused.stdout
        # A SuperNode with no key at all (Flower then offers a throw-away key): refused too.
        keyless_home = tmp_path / "keyless"
        keyless_home.mkdir()
        with (keyless_home / "supernode.log").open("wb") as out:  # a file, not a pipe: its helper outlives it
            keyless = subprocess.Popen([str(venv_bin() / "flower-supernode"), "--root-certificates", str(ca),
                                        "--superlink", link.address, "--host", "127.0.0.1",
                                        "--port", str(free_port())],
                                       stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True,
                                       env={**os.environ, **OFFLINE_ENV, "FLWR_HOME": str(keyless_home),
                                            "PATH": f"{venv_bin()}{os.pathsep}{os.environ['PATH']}"})
            try:
                assert keyless.wait(timeout=180) == 1
            finally:
                alive = {keyless.pid} if keyless.poll() is None else set()
                stop_processes(alive | set(flower_processes(keyless_home)))
        assert "[code: 2001]" in (keyless_home / "supernode.log").read_text()
        # The SuperLink's side: both refusals, each with the fingerprint of the key offered.
        refusals = refusals_in_log(link.state_dir / "superlink.log")
        by_reason = {r.reason: r.fingerprints for r in refusals}
        assert by_reason["SuperNode key not registered"] == (node_fingerprint(stranger),)
        assert len(by_reason["keyless or self-registering SuperNode refused"]) == 1
        logged = watcher.poll()
        assert len(logged) == 2
        lines = [json.loads(x) for x in (link.state_dir / "refusals.jsonl").read_text().splitlines()]
        assert [node_fingerprint(stranger)] in [x["node_key_fingerprints"] for x in lines]

        # The registered partners join over TLS with their node keys and finish a SecAgg+ round.
        stack.join_all()
        cfg = RunConfig.model_validate({"task": DATASETS / "tasks" / "telco_churn.yaml", "rounds": 1, "seed": 0,
                                        "run_id": "tls-auth-1"})
        result = run_deployment(cfg, len(configs), link.address, tmp_path / "runs", timeout_s=600,
                                root_certificates=ca)
        assert result.succeeded, result.error
        listed = CliRunner().invoke(app, ["coordinator", "partners", "list", "--registry", str(registry),
                                          "--superlink", link.address, "--root-certificates", str(ca)], env=WIDE)
        assert listed.exit_code == 0, listed.output
        for config in configs:
            assert node_fingerprint(config) in listed.output
        assert listed.output.count("online") >= 3, listed.output
        for join in stack.joins.values():
            assert join.poll() is None, "a SuperNode left before it was told to"
        codes = stack.stop_joins(signal.SIGINT)
    leftover = stack.leftover
    print(f"TLS + node-auth deployment test: {time.monotonic() - started:.1f} s end to end (run {result.wall_s:.1f} s)")
    assert codes == [0, 0, 0] and not leftover
    [round_1] = result.rounds
    assert set(round_1["secagg_stages"]) == SECAGG_STAGES
    for stage, partners in round_1["secagg_stages"].items():
        assert sorted(partners) == ["A", "B", "C"], stage
    assert (result.run_dir / "model" / "final.safetensors").exists()
    # The run's connection trusted the deployment CA; nothing was insecure.
    connection = (result.run_dir / "flwr_home" / "config.toml").read_text()
    assert "root-certificates" in connection and "insecure" not in connection
    assert "--insecure" not in (tmp_path / "superlink" / "superlink.log").read_text()
    assert set(read_registry(registry)) == {"A", "B", "C"}
    assert not flower_processes(tmp_path), flower_processes(tmp_path)
