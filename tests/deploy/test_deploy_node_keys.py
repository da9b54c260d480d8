"""SuperNode keys: created by `fedcrm client init`, in the format Flower reads, named by fingerprint."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from fedcrm.cli import app
from fedcrm.client.config import load_partner_config
from fedcrm.client.join import JoinSettings, supernode_command
from fedcrm.coordinator.link_security import connection_toml, refusals_in_log, superlink_security_args, tls_choice
from fedcrm.coordinator.partners import PartnerEntry, add_partner, read_registry
from fedcrm.errors import CoordinatorError, NodeKeyError, PartnerRegistryError
from fedcrm.node_keys import create_node_key, fingerprint, fingerprints_in_text, load_private_key, load_public_key
from fedcrm.paths import DATASETS

WIDE = {"COLUMNS": "400"}


def test_init_creates_a_node_key_pair_flower_accepts(tmp_path: Path) -> None:
    from flwr.cli.supernode.register import try_load_public_key

    shutil.copytree(DATASETS / "partners" / "telco" / "skewed" / "A", tmp_path / "A")
    config = tmp_path / "A" / "partner.toml"
    result = CliRunner().invoke(app, ["client", "init", "--config", str(config)], env=WIDE)
    assert result.exit_code == 0, result.output
    key_path = load_partner_config(config).node_key_path
    assert key_path == tmp_path / "A" / "node.key"
    assert key_path.stat().st_mode & 0o777 == 0o600
    private = load_private_key(key_path)
    assert private.curve.name == "secp384r1"
    assert fingerprint(private.public_key()) in result.output
    assert "node.key.pub" in result.output
    # Flower's own loaders: `flwr supernode register` reads the .pub, flower-supernode the private key.
    assert try_load_public_key(tmp_path / "A" / "node.key.pub").startswith(b"-----BEGIN PUBLIC KEY-----")
    serialization.load_ssh_private_key(key_path.read_bytes(), None)


def test_fingerprint_is_the_one_ssh_keygen_prints(tmp_path: Path) -> None:
    fp = create_node_key(tmp_path / "node.key", comment="fedcrm-A")
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen (openssh-client) is not installed")  # the format is still checked above
    out = subprocess.run(["ssh-keygen", "-lf", str(tmp_path / "node.key.pub")], capture_output=True, text=True,
                         check=True).stdout
    assert out.split()[1] == fp


def test_a_node_key_is_never_overwritten_and_bad_keys_are_named(tmp_path: Path) -> None:
    create_node_key(tmp_path / "node.key")
    with pytest.raises(NodeKeyError, match="refusing to overwrite"):
        create_node_key(tmp_path / "node.key")
    (tmp_path / "node.key").chmod(0o644)
    with pytest.raises(NodeKeyError, match="readable by group/others"):
        load_private_key(tmp_path / "node.key")
    with pytest.raises(NodeKeyError, match="fedcrm client init"):
        load_private_key(tmp_path / "missing.key")
    (tmp_path / "rsa.pub").write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq0mcd9N0kS8tC5vQ3xQ0A2xg0m1r6yJ5S3m0YxUbTi\n")
    with pytest.raises(NodeKeyError, match="NIST EC"):
        load_public_key(tmp_path / "rsa.pub")
    (tmp_path / "junk.pub").write_text("not a key\n")
    with pytest.raises(NodeKeyError, match="junk.pub: not an OpenSSH public key"):
        load_public_key(tmp_path / "junk.pub")


def test_join_signs_with_the_node_key_over_tls_and_sends_none_insecure(tmp_path: Path) -> None:
    shutil.copytree(DATASETS / "partners" / "telco" / "skewed" / "A", tmp_path / "A")
    config_path = tmp_path / "A" / "partner.toml"
    (tmp_path / "ca.pem").write_text("placeholder: only existence is checked here\n")
    config = load_partner_config(config_path)
    tls = JoinSettings(superlink="127.0.0.1:9", root_certificates=tmp_path / "ca.pem")
    with pytest.raises(NodeKeyError, match="node.key: node key not found"):
        supernode_command(config, tls)
    assert CliRunner().invoke(app, ["client", "init", "--config", str(config_path)]).exit_code == 0
    command = supernode_command(config, tls)
    assert command[command.index("--auth-supernode-private-key") + 1] == str(config.node_key_path.resolve())
    insecure = supernode_command(config, JoinSettings(superlink="127.0.0.1:9", insecure=True))
    assert "--auth-supernode-private-key" not in insecure and "--insecure" in insecure


def test_superlink_flags_need_an_explicit_choice_and_auth_needs_tls(tmp_path: Path) -> None:
    from fedcrm.certs import issue

    assert superlink_security_args(None, node_auth=False) == ["--insecure"]
    with pytest.raises(CoordinatorError, match="needs TLS"):
        superlink_security_args(None, node_auth=True)
    issue(tmp_path, ["127.0.0.1"])
    args = superlink_security_args(tmp_path, node_auth=True)
    assert "--insecure" not in args and args[-1] == "--enable-supernode-auth"
    assert args[args.index("--ssl-keyfile") + 1] == str((tmp_path / "server.key").resolve())
    (tmp_path / "server.key").chmod(0o640)
    with pytest.raises(Exception, match="server.key"):
        superlink_security_args(tmp_path, node_auth=True)
    with pytest.raises(CoordinatorError, match="--root-certificates CA.pem"):
        tls_choice("127.0.0.1:9093", None, insecure=False)
    assert tls_choice("127.0.0.1:9093", None, insecure=True) is None
    assert 'root-certificates = "' in connection_toml("fedcrm", "127.0.0.1:9093", tmp_path / "ca.pem")
    assert "insecure = true" in connection_toml("fedcrm", "127.0.0.1:9093", None)


def test_cli_superlink_and_run_refuse_without_a_tls_choice() -> None:
    no_choice = CliRunner().invoke(app, ["coordinator", "superlink", "--state-dir", "/nonexistent/x"], env=WIDE)
    assert no_choice.exit_code == 1 and "--certs DIR" in no_choice.output and "--insecure" in no_choice.output
    run = CliRunner().invoke(app, ["coordinator", "run", "--superlink", "127.0.0.1:9", "--partners", "3",
                                   "--task", str(DATASETS / "tasks" / "telco_churn.yaml")], env=WIDE)
    assert run.exit_code == 1 and "--root-certificates" in run.output


def test_refusals_in_a_superlink_log_are_named_by_fingerprint(tmp_path: Path) -> None:
    create_node_key(tmp_path / "node.key")
    public = load_public_key(tmp_path / "node.key.pub")
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    quoted = repr(pem)  # Flower logs the key as a bytes literal with \n escapes
    (tmp_path / "superlink.log").write_text(
        "INFO : Starting Flower SuperLink\n"
        f"ERROR : [/v1/fleet/activate-node][ApiError:2004] Attempted to register SuperNode with public key: {quoted}, "
        "exception: No SuperNode found with the given public key.\n"
        "INFO : 127.0.0.1:1 - \"POST /v1/fleet/activate-node HTTP/1.1\" 412\n")
    [refusal] = refusals_in_log(tmp_path / "superlink.log")
    assert refusal.reason == "SuperNode key not registered"
    assert refusal.fingerprints == (fingerprint(public),) == tuple(fingerprints_in_text(quoted))


def test_partner_registry_refuses_a_second_name_for_one_key_before_asking_flower(tmp_path: Path) -> None:
    create_node_key(tmp_path / "a.key")
    registry = tmp_path / "partners.json"
    fp = fingerprint(load_public_key(tmp_path / "a.key.pub"))
    from fedcrm.coordinator.partners import _write_registry

    _write_registry(registry, {"A": PartnerEntry("A", fp, "ecdsa-sha2-nistp384 AAAA", "1", "127.0.0.1:9", "now")})
    # No SuperLink listens on 127.0.0.1:9: both refusals come from the registry, before any Flower call.
    with pytest.raises(PartnerRegistryError, match="already registered for partner A"):
        add_partner("B", tmp_path / "a.key.pub", "127.0.0.1:9", tmp_path / "ca.pem", registry)
    with pytest.raises(PartnerRegistryError, match="partner A is already registered"):
        add_partner("A", tmp_path / "a.key.pub", "127.0.0.1:9", tmp_path / "ca.pem", registry)
    with pytest.raises(PartnerRegistryError, match="partner name"):
        add_partner("bad name", tmp_path / "a.key.pub", "127.0.0.1:9", tmp_path / "ca.pem", registry)
    assert list(read_registry(registry)) == ["A"]
    registry.write_text("{not json")
    with pytest.raises(PartnerRegistryError, match="partners.json: not a fedcrm partner registry"):
        read_registry(registry)
