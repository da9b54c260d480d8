"""The exported bundle verifies with no database; any changed byte fails it. Plus the log CLI."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import typer
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from fedcrm.consent import checkpoint as cp
from fedcrm.consent.bundle import verify_bundle
from fedcrm.consent.cli_log import register
from fedcrm.consent.db import normalise_url
from fedcrm.consent.ledger import Ledger


@pytest.fixture
def small(tmp_path: Path, signing_key: Path, make) -> Ledger:
    """A SQLite ledger with a few entries of every personal/public mix."""
    led = Ledger.open(tmp_path / "small.db", signing_key_path=signing_key, origin=make.origin)
    led.append([make.consent(1), make.consent(2)])
    with led.transaction() as txn:  # a usage record always comes with its subject set (verify checks it)
        use = make.usage([make.pseudonym(1)])
        txn.append([use])
        txn.store_subject_set(use.subject_fingerprint, [make.pseudonym(1)])
    yield led
    led.close()


def test_bundle_verifies_offline_and_holds_no_personal_data(ledger: Ledger, tmp_path: Path, make) -> None:
    ledger.append([make.consent(n) for n in range(5)])
    trusted = ledger.latest_checkpoint()
    ledger.append([make.consent(9)])
    for out in (tmp_path / "bundle", tmp_path / "bundle.json"):
        head = ledger_export(ledger, out)
        ledger_text = out.read_text() if out.is_file() else "".join(p.read_text() for p in sorted(out.iterdir()))
        assert make.pseudonym(3) not in ledger_text
        report = verify_bundle(out, trusted=trusted.note, verifier=ledger.verifier)
        assert report.ok and report.checked_size == head.size == 6 and report.trusted_size == 5


def ledger_export(ledger: Ledger, out: Path) -> cp.Checkpoint:
    from fedcrm.consent.bundle import export_bundle

    return export_bundle(ledger, out)


def test_any_changed_byte_of_a_single_file_bundle_fails(small: Ledger, tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    ledger_export(small, path)
    original = path.read_bytes()
    assert verify_bundle(path).ok
    for i in range(len(original)):
        changed = bytearray(original)
        changed[i] ^= 0x01
        path.write_bytes(bytes(changed))
        assert not verify_bundle(path).ok, f"byte {i} ({chr(original[i])!r}) changed and the bundle still verified"


def test_any_changed_byte_of_a_directory_bundle_fails(small: Ledger, tmp_path: Path) -> None:
    out = tmp_path / "b"
    ledger_export(small, out)
    assert verify_bundle(out).ok
    for file in sorted(out.iterdir()):
        original = file.read_bytes()
        for i in range(len(original)):
            changed = bytearray(original)
            changed[i] ^= 0x01
            file.write_bytes(bytes(changed))
            assert not verify_bundle(out).ok, f"{file.name} byte {i} changed and the bundle still verified"
        file.write_bytes(original)
    assert verify_bundle(out).ok


def test_bundle_signed_by_another_key_fails_when_the_verifier_is_pinned(small: Ledger, tmp_path: Path, make) -> None:
    cp.generate_signing_key(tmp_path / "other.pem")
    other = Ledger.open(tmp_path / "other.db", signing_key_path=tmp_path / "other.pem", origin=make.origin)
    other.append([make.consent(1)])
    ledger_export(other, tmp_path / "o.json")
    other.close()
    assert verify_bundle(tmp_path / "o.json").ok  # integrity alone
    report = verify_bundle(tmp_path / "o.json", verifier=small.verifier)
    assert not report.ok and "not the expected verifier" in report.message


# --- CLI ------------------------------------------------------------------------------

runner = CliRunner(env={"COLUMNS": "240"})


@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def test_cli_verify_ok_then_names_the_first_bad_index(cli: typer.Typer, small: Ledger, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'small.db'}"
    result = runner.invoke(cli, ["verify", "--ledger", url])
    assert result.exit_code == 0, result.output
    assert "OK" in result.output and "tree size" in result.output
    engine = create_engine(normalise_url(url))
    with engine.begin() as conn:
        conn.execute(text("UPDATE log_entries SET public_json = replace(public_json, 'grant', 'withdraw') WHERE idx = 1"))
    engine.dispose()
    result = runner.invoke(cli, ["verify", "--ledger", str(tmp_path / "small.db")])
    assert result.exit_code == 1 and "first bad index 1" in result.output


def test_cli_verify_with_trusted_head_and_env_url(cli: typer.Typer, small: Ledger, tmp_path: Path) -> None:
    head = tmp_path / "head.txt"
    head.write_text(small.checkpoint_at(2).note)
    result = runner.invoke(cli, ["verify", "--trusted-head", str(head)], env={"FEDCRM_LEDGER_URL": str(tmp_path / "small.db")})
    assert result.exit_code == 0, result.output and "trusted head size" in result.output
    head.write_text(small.checkpoint_at(2).note.replace("\n2\n", "\n1\n"))
    result = runner.invoke(cli, ["verify", "--trusted-head", str(head)], env={"FEDCRM_LEDGER_URL": str(tmp_path / "small.db")})
    assert result.exit_code == 1 and "does not verify" in result.output


def test_cli_export_then_verify_bundle_with_pinned_key(cli: typer.Typer, small: Ledger, tmp_path: Path) -> None:
    db = str(tmp_path / "small.db")
    assert runner.invoke(cli, ["export", "--ledger", db, "--out", str(tmp_path / "b.json")]).exit_code == 0
    pem = tmp_path / "pub.pem"
    assert runner.invoke(cli, ["key", "export", "--ledger", db, "--out", str(pem)]).exit_code == 0
    assert pem.read_bytes() == small.public_key_pem
    result = runner.invoke(cli, ["verify", "--bundle", str(tmp_path / "b.json"), "--public-key", str(pem)])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "b.json").read_text())
    doc["leaves"][0] = doc["leaves"][0].replace("grant", "withdraw")
    (tmp_path / "b.json").write_text(json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n")
    result = runner.invoke(cli, ["verify", "--bundle", str(tmp_path / "b.json")])
    assert result.exit_code == 1 and "FAILED" in result.output


def test_cli_key_export_verifier_string(cli: typer.Typer, small: Ledger, signing_key: Path, make) -> None:
    result = runner.invoke(cli, ["key", "export", "--signing-key", str(signing_key), "--name", make.origin, "--format", "verifier"])
    assert result.exit_code == 0 and result.output.strip() == small.verifier
    name, _, key = small.verifier.split("+", 2)
    assert name == make.origin and base64.b64decode(key)[0] == 1
    result = runner.invoke(cli, ["key", "export", "--signing-key", str(signing_key), "--format", "verifier"])
    assert result.exit_code == 2 and "--name" in result.output


def test_cli_verify_without_a_ledger_says_how_to_name_one(cli: typer.Typer, tmp_path: Path) -> None:
    result = runner.invoke(cli, ["verify"], env={"FEDCRM_LEDGER_URL": ""})
    assert result.exit_code == 2 and "--ledger" in result.output
    result = runner.invoke(cli, ["verify", "--ledger", str(tmp_path / "none.db")])
    assert result.exit_code == 1 and "no consent ledger" in result.output


def test_cli_verify_bundle_against_another_pinned_key_fails(cli: typer.Typer, small: Ledger, tmp_path: Path) -> None:
    runner.invoke(cli, ["export", "--ledger", str(tmp_path / "small.db"), "--out", str(tmp_path / "b")])
    cp.generate_signing_key(tmp_path / "other.pem")
    other_pub = tmp_path / "other_pub.pem"
    other_pub.write_bytes(cp.public_key_pem(cp.load_signing_key(tmp_path / "other.pem").public_key()))
    result = runner.invoke(cli, ["verify", "--bundle", str(tmp_path / "b"), "--public-key", str(other_pub)])
    assert result.exit_code == 1 and "pinned public key" in result.output
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    result = runner.invoke(cli, ["verify", "--bundle", str(garbage)])
    assert result.exit_code == 1 and "garbage.json" in result.output
