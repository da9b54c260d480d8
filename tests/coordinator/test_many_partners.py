"""Many partners in simulation: SecAgg+ parameters that scale, Ray actor settings, and the benchmark's code path."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fedcrm.coordinator.engine import ACTORS_VAR, simulation_actors
from fedcrm.coordinator.secagg import COMPLETE_GRAPH_MAX, secagg_parameters
from fedcrm.errors import ConfigError


@pytest.mark.parametrize(("partners", "minimum", "expected"), [
    (21, 21, (21, 20)),  # the largest complete graph: every partner holds a share of everyone's secrets
    (22, 22, (21, 20)),  # beyond it: 20 neighbours each, strict run keeps t = k - 1
    (50, 50, (21, 20)),
    (50, 40, (21, 17)),  # t = ceil(21 * 40 / 50): the run's dropout tolerance, scaled to the neighbourhood
    (50, 26, (21, 11)),  # never at or below half the neighbourhood
    (1000, 501, (21, 11)),
])
def test_secagg_shares_stop_growing_with_the_partners(partners: int, minimum: int, expected: tuple) -> None:
    num_shares, threshold = secagg_parameters(partners, minimum)
    assert (num_shares, threshold) == expected
    assert num_shares <= COMPLETE_GRAPH_MAX and num_shares % 2 == 1  # Flower's SecAgg+ ring wants an odd count
    assert num_shares / 2 < threshold < num_shares


def test_secagg_still_refuses_a_minority_minimum_with_many_partners() -> None:
    with pytest.raises(ValueError, match="use min_partners >= 26"):
        secagg_parameters(50, 25)


def test_ray_actors_default_to_one_per_core_and_a_typo_is_refused() -> None:
    assert simulation_actors(2, None) == 2
    assert simulation_actors(2, "") == 2
    assert simulation_actors(2, "3") == 3
    for bad in ("two", "0", "17", "1.5"):
        with pytest.raises(ConfigError, match=ACTORS_VAR):
            simulation_actors(2, bad)


@pytest.mark.slow  # starts a process
def test_the_process_tree_sampler_sees_a_child_and_its_cpu(tmp_path: Path) -> None:
    import subprocess
    import sys

    from benchmarks.scale_partners import TreeSampler, process_tree

    child = subprocess.Popen([sys.executable, "-c", "import time\nx = bytearray(50 * 2**20)\n"
                              "t = time.process_time()\nwhile time.process_time() - t < 0.3: pass\ntime.sleep(5)"])
    try:
        sampler = TreeSampler(interval_s=0.1)
        for _ in range(40):
            sampler.sample()
            if sampler.cpu_by_pid.get(child.pid, 0.0) >= 0.3:
                break
            import time

            time.sleep(0.1)
        assert child.pid in process_tree(os.getpid())
        assert sampler.peak_process_rss_mb >= 50
        assert sampler.cpu_by_pid[child.pid] >= 0.3
    finally:
        child.kill()
        child.wait()


@pytest.mark.slow
def test_the_many_partners_benchmark_runs_a_secagg_federation_and_leaves_nothing_running(tmp_path: Path) -> None:
    """The benchmark's own code path at a tiny size (5 partners x 300 rows, 1 round), so it cannot rot."""
    from benchmarks import scale_partners

    results = tmp_path / "many.json"
    out = scale_partners.main(["--partners", "5", "--rows", "300", "--rounds", "1", "--actors", "1",
                               "--work", str(tmp_path), "--results", str(results), "--no-docs"])
    entry = out["runs"]["5x300-r1-a1"]
    assert entry["succeeded"], entry["error"]
    assert entry["rounds_completed"] == 1 and len(entry["round_wall_s"]) == 1
    assert entry["ray_resources"]["actors"] == 1 and entry["ray_resources"]["ray_num_cpus"] == 1
    assert entry["secagg"] == {"num_shares": 5, "reconstruction_threshold": 4}
    assert 0.5 < entry["roc_auc"] <= 1.0
    # The tree was seen: the engine, Ray's processes and the actor, each with its memory and CPU.
    assert entry["peak_processes"] >= 4 and entry["peak_tree_pss_mb"] > 200 and entry["tree_cpu_s"] > 1
    assert entry["left_running"] == []
    assert json.loads(results.read_text())["runs"]["5x300-r1-a1"]["roc_auc"] == entry["roc_auc"]
