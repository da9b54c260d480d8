"""The SuperLink keeps its state in memory; a restarted one admits the partners of the operator's registry again."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedcrm.certs import issue
from fedcrm.cli import app
from fedcrm.coordinator.partners import live_nodes, read_registry, restore_partners
from fedcrm.coordinator.superlink import start_superlink, stop_superlink
from fedcrm.node_keys import create_node_key

pytestmark = pytest.mark.slow


def test_a_restarted_superlink_forgets_keys_until_the_registry_restores_them(tmp_path: Path) -> None:
    issue(tmp_path / "tls", ["127.0.0.1"])
    ca = tmp_path / "tls" / "ca.pem"
    registry = tmp_path / "partners.json"
    for name in ("A", "B"):
        create_node_key(tmp_path / name / "node.key", comment=f"fedcrm-{name}")
    link = start_superlink(tmp_path / "superlink", tls_dir=tmp_path / "tls", node_auth=True)
    try:
        for name in ("A", "B"):
            added = CliRunner().invoke(app, [
                "coordinator", "partners", "add", name, str(tmp_path / name / "node.key.pub"),
                "--superlink", link.address, "--root-certificates", str(ca), "--registry", str(registry)])
            assert added.exit_code == 0, added.output
        first_ids = {e.name: e.node_id for e in read_registry(registry).values()}
        assert set(live_nodes(link.address, ca)) == set(first_ids.values())
    finally:
        assert not stop_superlink(link)
    assert not (tmp_path / "superlink" / "state.db").exists()

    link = start_superlink(tmp_path / "superlink", tls_dir=tmp_path / "tls", node_auth=True)
    try:
        assert live_nodes(link.address, ca) == {}  # in memory: nothing survived the restart
        restored = restore_partners(link.address, ca, registry)
        assert [e.name for e in restored] == ["A", "B"]
        entries = read_registry(registry)
        assert set(live_nodes(link.address, ca)) == {e.node_id for e in entries.values()}
        assert {e.name: e.fingerprint for e in entries.values()} == {e.name: e.fingerprint for e in restored}
    finally:
        assert not stop_superlink(link)


def test_a_registry_entry_whose_key_does_not_match_its_fingerprint_is_refused(tmp_path: Path) -> None:
    from fedcrm.errors import PartnerRegistryError

    create_node_key(tmp_path / "A" / "node.key", comment="fedcrm-A")
    create_node_key(tmp_path / "B" / "node.key", comment="fedcrm-B")
    registry = tmp_path / "partners.json"
    registry.write_text(
        '{"partners": [{"name": "A", "fingerprint": "SHA256:not-the-key", "public_key": "%s", "node_id": "1",'
        ' "superlink": "127.0.0.1:9", "added_at": "2026-12-02T00:00:00Z"}]}'
        % (tmp_path / "A" / "node.key.pub").read_text().split("\n")[0])
    shutil.copy(registry, tmp_path / "before.json")
    with pytest.raises(PartnerRegistryError, match="does not match its fingerprint"):
        restore_partners("127.0.0.1:9", tmp_path / "ca.pem", registry)
    assert registry.read_text() == (tmp_path / "before.json").read_text()
