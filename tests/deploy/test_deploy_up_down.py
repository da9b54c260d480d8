"""`fedcrm up --run` then `fedcrm down`: the real topology as processes, and nothing left after."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fedcrm.coordinator.local_postgres import FALLBACK_ROOT, cluster_dir
from fedcrm.coordinator.local_stack import down, read_stack, registry_url
from fedcrm.coordinator.processes import processes_with_marker
from fedcrm.coordinator.registry import list_runs
from fedcrm.coordinator.registry_db import open_registry
from fedcrm.coordinator.registry_index import get_run
from tests.deploy.podman_env import descendants, listening_addresses

ENV = {**os.environ, "COLUMNS": "250"}


def processes_under(root: Path) -> set[int]:
    """Live, non-zombie processes whose command line or FLWR_HOME mentions ``root``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            blob = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:
            continue
        if str(root).encode() in blob:
            found.add(int(entry.name))
    return found


@pytest.mark.slow
def test_up_runs_a_tls_authenticated_federation_and_down_stops_exactly_what_up_started(tmp_path: Path) -> None:
    stack = tmp_path / "stack"
    try:
        started = subprocess.run([sys.executable, "-m", "fedcrm.cli", "up", "--dir", str(stack), "--run",
                                  "--rounds", "1"], capture_output=True, text=True, timeout=1200, env=ENV)
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        assert "succeeded" in started.stdout
        parts = read_stack(stack)
        assert [p.name for p in parts] == ["registry-db", "superlink", "partner A", "partner B", "partner C"]
        for part in parts:
            assert str(part.pid) in started.stdout and part.listens in started.stdout
            assert processes_with_marker(part.marker), f"{part.name} is not running after `up` returned"
        # Every listener of the stack is on 127.0.0.1.
        listening = listening_addresses(descendants({p.pid for p in parts}))
        assert {p.listens for p in parts} <= listening and all(a.startswith("127.0.0.1:") for a in listening)
        [run] = list_runs(stack / "runs")
        assert run["succeeded"] and run["rounds"] == 1
        assert "root-certificates" in (stack / "runs" / run["run_id"] / "flwr_home" / "config.toml").read_text()
        assert "--insecure" not in (stack / "superlink" / "superlink.log").read_text()
        # The run is in the stack's PostgreSQL registry (Debian's server, on 127.0.0.1), with its rounds.
        url = registry_url(stack)
        assert url and url.startswith("postgresql+psycopg://") and url in " ".join(started.stdout.split())
        engine = open_registry(url)
        try:
            indexed = get_run(engine, run["run_id"])
        finally:
            engine.dispose()
        assert indexed["status"] == "completed", indexed

        stopped = subprocess.run([sys.executable, "-m", "fedcrm.cli", "down", "--dir", str(stack)],
                                 capture_output=True, text=True, timeout=300, env=ENV)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert not (stack / "stack.json").exists()
        assert not any(processes_with_marker(p.marker) for p in parts)
        assert not processes_under(stack), processes_under(stack)
    finally:
        down(stack)
        cluster = cluster_dir(stack / "registry-db")
        if cluster.is_relative_to(FALLBACK_ROOT):  # the server user could not reach tmp_path: its own copy
            shutil.rmtree(cluster, ignore_errors=True)
