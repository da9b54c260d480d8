"""The operator's registry of partner node keys, kept in step with the SuperLink's.

A partner sends its ``node.key.pub``; the operator checks the fingerprint with the
partner out of band and registers it: :func:`add_partner` validates the key, registers
it with the running SuperLink through Flower's own ``flwr supernode register`` (over
TLS, trusting the deployment CA) and records name, fingerprint, public key and Flower's
node id in a JSON registry file. The SuperLink alone decides admission; the registry is
what lets an operator say *which partner* a node id or a refused key belongs to, and
what :func:`remove_partner` unregisters when a partner leaves or rotates its key.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from fedcrm.coordinator.link_security import connection_toml
from fedcrm.coordinator.superlink import flower_env, venv_bin
from fedcrm.errors import PartnerRegistryError
from fedcrm.logging import get_logger
from fedcrm.node_keys import fingerprint, load_public_key

log = get_logger(__name__)

CONNECTION = "fedcrm"
DEFAULT_REGISTRY = Path("partners.json")
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


@dataclass(frozen=True)
class PartnerEntry:
    """One registered partner node."""

    name: str
    fingerprint: str
    public_key: str
    node_id: str
    superlink: str
    added_at: str


def read_registry(path: Path) -> dict[str, PartnerEntry]:
    """Partner name → entry; an absent file is an empty registry, a broken one an error naming it."""
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text())
        return {e["name"]: PartnerEntry(**e) for e in raw["partners"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise PartnerRegistryError(f"{path}: not a fedcrm partner registry ({exc})") from exc


def _write_registry(path: Path, entries: dict[str, PartnerEntry]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps({"partners": [asdict(e) for e in sorted(entries.values(), key=lambda e: e.name)]},
                              indent=2) + "\n")
    os.replace(tmp, path)


def flwr_cli(args: list[str], superlink: str, root_certificates: Path, timeout_s: float = 60.0) -> dict[str, Any]:
    """Run ``flwr <args> fedcrm --format json`` against ``superlink``; its JSON answer, or an error naming Flower's."""
    with tempfile.TemporaryDirectory(prefix="fedcrm-flwr-") as home:
        flwr_home = Path(home)
        (flwr_home / "config.toml").write_text(connection_toml(CONNECTION, superlink, root_certificates))
        env = flower_env(flwr_home, uuid.uuid4().hex)
        try:
            done = subprocess.run([str(venv_bin() / "flwr"), *args, CONNECTION, "--format", "json"],
                                  env=env, capture_output=True, text=True, timeout=timeout_s, cwd=flwr_home)
        except subprocess.TimeoutExpired as exc:
            raise PartnerRegistryError(f"`flwr {' '.join(args[:2])}` against {superlink} timed out") from exc
    start = done.stdout.find("{")
    try:
        answer = json.loads(done.stdout[start:]) if start >= 0 else {}
    except ValueError:
        answer = {}
    if not answer.get("success"):
        detail = answer.get("error-message") or (done.stderr or done.stdout).strip()[-500:]
        raise PartnerRegistryError(f"`flwr {' '.join(args[:2])}` against {superlink} failed "
                                   f"(exit {done.returncode}): {detail}")
    return answer


def add_partner(name: str, public_key_path: Path, superlink: str, root_certificates: Path,
                registry: Path = DEFAULT_REGISTRY) -> PartnerEntry:
    """Register a partner's node public key with the SuperLink and record it; refuses duplicates."""
    if not name or not set(name) <= _NAME_CHARS:
        raise PartnerRegistryError(f"partner name {name!r}: use letters, digits, '-', '_' or '.'")
    key = load_public_key(public_key_path)
    key_fingerprint = fingerprint(key)
    entries = read_registry(registry)
    if name in entries:
        raise PartnerRegistryError(f"partner {name} is already registered with key {entries[name].fingerprint} "
                                   f"(node {entries[name].node_id}); `fedcrm coordinator partners remove {name}` first")
    for other in entries.values():
        if other.fingerprint == key_fingerprint:
            raise PartnerRegistryError(f"{public_key_path}: key {key_fingerprint} is already registered "
                                       f"for partner {other.name}")
    answer = flwr_cli(["supernode", "register", str(public_key_path.resolve()), "--name", name], superlink,
                      root_certificates)
    entry = PartnerEntry(name, key_fingerprint, public_key_path.read_text().split("\n")[0].strip(),
                         str(answer["node-id"]), superlink, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    entries[name] = entry
    _write_registry(registry, entries)
    log.info("partner node key registered", extra={"partner": name, "node_key_fingerprint": key_fingerprint,
                                                   "node_id": entry.node_id, "superlink": superlink})
    return entry


def restore_partners(superlink: str, root_certificates: Path, registry: Path = DEFAULT_REGISTRY
                     ) -> list[PartnerEntry]:
    """Register every key of ``registry`` with a SuperLink that just started; returns the updated entries.

    The SuperLink keeps its state in memory (:mod:`fedcrm.coordinator.superlink`), so a restarted
    SuperLink knows no node key: the operator's registry is the record of who is admitted. Each
    key is registered again with ``flwr supernode register``; Flower hands out new node ids,
    which are written back to the registry.
    """
    entries = read_registry(registry)
    restored: list[PartnerEntry] = []
    with tempfile.TemporaryDirectory(prefix="fedcrm-partner-keys-") as tmp:
        for entry in sorted(entries.values(), key=lambda e: e.name):
            key_path = Path(tmp) / f"{entry.name}.pub"
            key_path.write_text(entry.public_key + "\n")
            if fingerprint(load_public_key(key_path)) != entry.fingerprint:
                raise PartnerRegistryError(f"{registry}: the key recorded for partner {entry.name} does not match "
                                           f"its fingerprint {entry.fingerprint}")
            answer = flwr_cli(["supernode", "register", str(key_path), "--name", entry.name], superlink,
                              root_certificates)
            entries[entry.name] = replace(entry, node_id=str(answer["node-id"]), superlink=superlink)
            restored.append(entries[entry.name])
            log.info("partner node key registered again", extra={
                "partner": entry.name, "node_key_fingerprint": entry.fingerprint,
                "node_id": entries[entry.name].node_id, "superlink": superlink})
    if restored:
        _write_registry(registry, entries)
    return restored


def remove_partner(name: str, superlink: str, root_certificates: Path, registry: Path = DEFAULT_REGISTRY
                   ) -> PartnerEntry:
    """Unregister a partner's node from the SuperLink (``flwr supernode unregister``) and drop it from the registry."""
    entries = read_registry(registry)
    if name not in entries:
        raise PartnerRegistryError(f"partner {name!r} is not in {registry}")
    entry = entries.pop(name)
    flwr_cli(["supernode", "unregister", entry.node_id], superlink, root_certificates)
    _write_registry(registry, entries)
    log.info("partner node key unregistered", extra={"partner": name, "node_key_fingerprint": entry.fingerprint,
                                                     "node_id": entry.node_id})
    return entry


def live_nodes(superlink: str, root_certificates: Path) -> dict[str, dict[str, Any]]:
    """Node id → Flower's view of it (status, online since) from ``flwr supernode list``."""
    answer = flwr_cli(["supernode", "list"], superlink, root_certificates)
    return {str(n["node-id"]): n for n in answer.get("nodes", [])}


def name_for_fingerprint(registry: Path, key_fingerprint: str) -> str | None:
    """The registered partner holding this key, if any."""
    return next((e.name for e in read_registry(registry).values() if e.fingerprint == key_fingerprint), None)
