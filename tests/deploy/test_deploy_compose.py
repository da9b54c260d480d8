"""The repository's docker-compose.yml, brought up for real and driven through a federation.

Images are built from docker/Dockerfile on a base made from Debian's archive (mmdebstrap)
with Python packages from a host-built wheelhouse (the build runs with ``--network
none``); the stack is brought up by Debian's ``docker-compose`` against podman's
Docker-compatible API, with tests/deploy/compose.host.yml switching every service to host
networking on 127.0.0.1. Through it, a 2-round SecAgg+ run over the bundled Telco
partners, on TLS from ``fedcrm certs`` with SuperNode authentication (each partner's node
key registered by the coordinator service at start-up). Afterwards ``down -v`` must leave
no container, volume or process.

The registry database is the compose file's ``registry-db`` service (Postgres; here Debian's
PostgreSQL in an image made from the archive, see compose.host.yml); the run is indexed into
it inside the coordinator container and its model and round metrics are read back from it.

Needs ``bash .ci/install-containers.sh``. Measured on the shared 2-core machine (load
8-15, caches filled): 198-305 s in all (build 18-22 s, up 75-132 s, the 2-round run
74-113 s, down 21-24 s); a fresh machine first builds two base images, the wheelhouse and the image's
dependency layer (about 30 min at load 20+, see docs/deployment.md). Before the SuperLink
got a longer ServerApp start-up window (fedcrm.coordinator.superlink_main) the federation
never started at load 20+: Flower's fixed 30 s, and importing the ServerApp took 31 s.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fedcrm.certs import issue
from fedcrm.cli import app
from fedcrm.coordinator.registry import list_runs, read_events, rounds_from_events
from fedcrm.coordinator.superlink import free_port
from fedcrm.node_keys import fingerprint, load_private_key
from fedcrm.paths import DATASETS
from tests.deploy.podman_env import (INSTALL_HINT, POSTGRES_PACKAGES, REPO, Podman, Timings, base_image,
                                     build_context, descendants, listening_addresses, missing_tools, wheelhouse)
from tests.federation import approve_task

PARTNERS = ("A", "B", "C")
UID = 10001  # the image's `fedcrm` user (docker/Dockerfile)
PROJECT = "fedcrmtest"
SECAGG_STAGES = {"setup", "share_keys", "collect_masked_vectors", "unmask"}


def prepare_partner(deploy: Path, name: str) -> None:
    """What partner ``name``'s data team does before deploying: init, approve, place secrets."""
    data = deploy / "partners" / name
    secrets = deploy / "secrets" / name
    shutil.copytree(DATASETS / "partners" / "telco" / "skewed" / name, data)
    secrets.mkdir(parents=True)
    container_config = (data / "partner.toml").read_text().replace(
        'key_file = "partner.key"', 'key_file = "/run/secrets/partner.key"').replace(
        'ledger_key_file = "ledger.key"', 'ledger_key_file = "/run/secrets/ledger.key"\n'
                                          'node_key_file = "/run/secrets/node.key"')
    assert "/run/secrets/node.key" in container_config
    # The same config on the partner's workstation, keys in its secrets directory.
    host_config = data / "partner.init.toml"
    host_config.write_text(container_config.replace("/run/secrets/", f"{secrets}/"))
    result = CliRunner().invoke(app, ["client", "init", "--config", str(host_config)])
    assert result.exit_code == 0, result.output
    approve_task(host_config)
    host_config.unlink()
    (data / "partner.toml").write_text(container_config)
    shutil.copy2(secrets / "node.key.pub", deploy / "partner-keys" / f"{name}.pub")


def prepare_registry_secrets(deploy: Path) -> None:
    """The operator's registry database password: bare for Postgres, as a pgpass line for the coordinator."""
    registry = deploy / "registry"
    registry.mkdir()
    password = secrets.token_urlsafe(24)
    (registry / "db_password").write_text(password + "\n")
    (registry / "db_password").chmod(0o644)  # read by the postgres user of the database image
    (registry / "pgpass").write_text(f"*:*:registry:fedcrm:{password}\n")
    (registry / "pgpass").chmod(0o600)  # libpq ignores a pgpass file others can read


REGISTRY_QUERY = """
import json, sys
from pathlib import Path
from fedcrm.coordinator.registry_db import open_registry, registry_url
from fedcrm.coordinator.registry_index import get_rounds, index_run, list_models
runs = Path("/var/lib/fedcrm/runs")
engine = open_registry(registry_url(None, runs))
run_id = index_run(engine, runs / sys.argv[1])
print(json.dumps({"url": engine.url.render_as_string(hide_password=True), "run_id": run_id,
                  "rounds": get_rounds(engine, run_id), "models": list_models(engine, run_id=run_id)}, default=str))
"""


def render_host_config(podman: Podman, env: dict[str, str], tmp: Path) -> Path:
    """docker-compose.yml merged with the host-network override by docker-compose itself.

    One change on top: published ports are dropped from host-network services. Docker
    Engine ignores them there (with a warning) but docker-py refuses the combination, and an
    override file cannot delete a key; with host networking each service's own 127.0.0.1
    address is what is reachable.
    """
    merged = podman.run("docker-compose", "-f", str(REPO / "docker-compose.yml"),
                        "-f", str(REPO / "tests" / "deploy" / "compose.host.yml"), "config", env=env, cwd=REPO).stdout
    config = yaml.safe_load(merged)
    for service in config["services"].values():
        assert service.get("network_mode") == "host", service
        service.pop("ports", None)
    path = tmp / "compose.rendered.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def chown_tree(path: Path, uid: int) -> None:
    for root, dirs, files in os.walk(path):
        os.chown(root, uid, uid)
        for name in files:
            os.chown(os.path.join(root, name), uid, uid)


@pytest.mark.slow
@pytest.mark.containers
@pytest.mark.timeout(3600)  # a fresh machine builds two base images, a wheelhouse and the image first
def test_compose_stack_runs_a_tls_authenticated_secagg_federation_and_leaves_nothing(tmp_path: Path) -> None:
    assert not missing_tools(), f"missing {missing_tools()}: {INSTALL_HINT}"
    timings = Timings()
    started = time.monotonic()
    deploy = tmp_path / "deploy"
    (deploy / "partner-keys").mkdir(parents=True)
    issue(deploy / "tls", ["127.0.0.1", "coordinator"])
    for name in PARTNERS:
        prepare_partner(deploy, name)
    prepare_registry_secrets(deploy)
    chown_tree(deploy, UID)
    timings.measure("partners: init, approve, certificates", started)

    podman = Podman(tmp_path / "podman")
    ports = {"SUPERLINK": free_port(), "PG": free_port(), **{name: free_port() for name in PARTNERS}}
    compose_env = {**podman.env, "FEDCRM_TLS_DIR": str(deploy / "tls"), "FEDCRM_SECRETS": str(deploy / "secrets"),
                   "FEDCRM_PARTNER_KEYS": str(deploy / "partner-keys"), "FEDCRM_TASKS": str(DATASETS / "tasks"),
                   "FEDCRM_TEST_SUPERLINK_PORT": str(ports["SUPERLINK"]), "FEDCRM_TEST_PG_PORT": str(ports["PG"]),
                   "FEDCRM_REGISTRY_SECRETS": str(deploy / "registry"),
                   **{f"FEDCRM_PARTNER_{n}_DIR": str(deploy / "partners" / n) for n in PARTNERS},
                   **{f"FEDCRM_TEST_PORT_{n}": str(ports[n]) for n in PARTNERS}}
    up = False
    down = None
    try:
        podman.start_service()
        step = time.monotonic()
        base = base_image(podman, timings)
        compose_env["FEDCRM_TEST_POSTGRES_IMAGE"] = base_image(podman, timings, POSTGRES_PACKAGES, "fedcrm-postgres")
        wheels = wheelhouse(timings)
        timings.measure("base images + wheelhouse (cached after the first run)", step)
        compose = ["docker-compose", "-p", PROJECT, "-f", str(render_host_config(podman, compose_env, tmp_path))]
        step = time.monotonic()
        context = build_context(tmp_path / "context", wheels)
        podman.podman("build", "--network", "none", "--build-arg", f"BASE_IMAGE={base}", "-f",
                      str(context / "docker" / "Dockerfile"), "-t", "fedcrm:0.1.0", str(context), timeout=1500)
        shutil.rmtree(context)
        timings.measure("podman build fedcrm image (network none)", step)

        step = time.monotonic()
        up = True
        podman.start_healthchecks()  # before `up`: it waits for the coordinator's health check to pass
        podman.run(*compose, "up", "-d", "--no-build", env=compose_env, cwd=REPO, timeout=900)
        names = {s: f"{PROJECT}_{s}_1" for s in ("registry-db", "coordinator", "partner-a", "partner-b", "partner-c")}
        deadline = time.monotonic() + 600
        while {podman.health(n) for n in names.values()} != {"healthy"}:
            states = {s: podman.health(n) for s, n in names.items()}
            if time.monotonic() > deadline or "missing" in states.values():
                logs = podman.run(*compose, "logs", "--tail", "40", env=compose_env, cwd=REPO, check=False).stdout
                raise AssertionError(f"services not healthy: {states}\n{logs[-6000:]}")
            time.sleep(2)
        timings.measure("compose up until every service is healthy", step)

        step = time.monotonic()
        run = podman.run(*compose, "exec", "-T", "coordinator", "fedcrm", "coordinator", "run",
                         "--superlink", f"127.0.0.1:{ports['SUPERLINK']}", "--root-certificates", "/run/secrets/ca.pem",
                         "--partners", "3", "--task", "/etc/fedcrm/tasks/telco_churn.yaml", "--rounds", "2",
                         "--seed", "0", "--runs-dir", "/var/lib/fedcrm/runs", "--run-id", "compose-1",
                         env={**compose_env, "COLUMNS": "200"}, cwd=REPO, timeout=1200, check=False)
        timings.measure("2-round TLS + authenticated SecAgg+ run", step)
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
        assert "run compose-1 succeeded" in run.stdout

        # Nothing any service started listens beyond 127.0.0.1.
        pids = descendants({podman.pid(n) for n in names.values()})
        listening = listening_addresses(pids)
        assert listening and all(a.startswith("127.0.0.1:") for a in listening), listening
        assert f"127.0.0.1:{ports['SUPERLINK']}" in listening
        assert yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["coordinator"]["ports"] == [
            "9093:9093"]  # what a real deployment publishes: the SuperLink's port, nothing else

        # The model and metrics, in the coordinator's volume (the registry the operator reads).
        mountpoint = Path(podman.podman("volume", "inspect", f"{PROJECT}_coordinator-state", "--format",
                                        "{{.Mountpoint}}").stdout.strip())
        [entry] = [r for r in list_runs(mountpoint / "runs") if r["run_id"] == "compose-1"]
        assert entry["succeeded"] and entry["rounds"] == 2 and entry["roc_auc"] is not None
        run_dir = mountpoint / "runs" / "compose-1"
        assert (run_dir / "model" / "final.safetensors").exists()
        manifest = json.loads((run_dir / "manifest.json").read_text())
        assert manifest
        rounds = rounds_from_events(read_events(run_dir))
        assert [r["round"] for r in rounds] == [1, 2]
        for r in rounds:  # every SecAgg+ stage completed by all three partners, metrics recorded
            assert "roc_auc" in r["federated"], r
            assert set(r["secagg_stages"]) == SECAGG_STAGES, r
            assert all(sorted(p) == list(PARTNERS) for p in r["secagg_stages"].values()), r
        # The model and metrics in the coordinator's registry database (Postgres), indexed from the run directory.
        query = podman.run(*compose, "exec", "-T", "coordinator", "python3", "-c", REGISTRY_QUERY, "compose-1",
                           env=compose_env, cwd=REPO, timeout=300)
        registry_view = json.loads(query.stdout.strip().splitlines()[-1])
        # Postgres, with no password in the URL or the environment (libpq reads the pgpass secret).
        assert registry_view["url"] == f"postgresql+psycopg://fedcrm@127.0.0.1:{ports['PG']}/registry", registry_view
        assert [r["round"] for r in registry_view["rounds"]] == [1, 2]
        for r in registry_view["rounds"]:
            assert r["completed"] and "roc_auc" in r["federated"], r
            assert sorted(r["fit_partners"]) == list(PARTNERS), r
        [final] = registry_view["models"]
        assert final["label"] == "final" and final["sha256"] == manifest["files"]["model/final.safetensors"]
        # Partners registered by key at start-up, each with the fingerprint its own node key has.
        registry = json.loads((mountpoint / "partners.json").read_text())["partners"]
        assert {p["name"]: p["fingerprint"] for p in registry} == {
            n: fingerprint(load_private_key(deploy / "secrets" / n / "node.key").public_key()) for n in PARTNERS}
    finally:
        step = time.monotonic()
        if up:
            down = podman.run(*compose, "down", "-v", "--remove-orphans", "--timeout", "20", env=compose_env,
                              cwd=REPO, timeout=300, check=False)
        podman.stop()
        timings.measure("compose down -v + stop podman service", step)
        print(f"compose test timings (s): {json.dumps(timings.steps)}; total {time.monotonic() - started:.0f} s")
    assert down is not None and down.returncode == 0, down and down.stderr
    # Nothing left: no container, no volume of the project, no process of podman's.
    offline = {k: v for k, v in podman.env.items() if k != "DOCKER_HOST"}
    assert podman.podman("ps", "-a", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}",
                         env=offline).stdout.strip() == ""
    assert PROJECT not in podman.podman("volume", "ls", "-q", env=offline).stdout  # state and registry-db
    assert podman.service is not None and podman.service.poll() is not None
    # podman 4.3 keeps the conmon of an `exec` session (the operator's `fedcrm coordinator run`) after the
    # container is gone, and runs short `podman container cleanup` helpers: the test stops them by PID.
    # Nothing else may be left, and nothing at all after that.
    print(f"podman leftovers stopped by PID: {podman.leftover_commands}")
    assert all(cmd.startswith(("/usr/bin/conmon ", "/usr/bin/podman ", "podman ", "?"))
               for cmd in podman.leftover_commands.values()), podman.leftover_commands
    assert not podman.leftover_pids(), "processes of the stack survived SIGKILL"

