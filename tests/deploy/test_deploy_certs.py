"""`fedcrm certs`: CA, server and client certificates that a real TLS handshake accepts."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from fedcrm.certs import check_tls_files, describe, issue, issue_leaf, load_ca
from fedcrm.cli import app
from fedcrm.errors import CertificateError


def handshake(directory: Path, server_name: str) -> str:
    """Serve one TLS connection on 127.0.0.1 with server.pem and connect verifying against ca.pem."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(directory / "server.pem", directory / "server.key")
    client_ctx = ssl.create_default_context(cafile=str(directory / "ca.pem"))
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"ok")
            except (ssl.SSLError, OSError):
                pass

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                with client_ctx.wrap_socket(raw, server_hostname=server_name) as tls:
                    return tls.recv(2).decode()
        finally:
            thread.join(timeout=5)


def test_certs_create_writes_a_ca_and_a_server_cert_for_the_given_addresses(tmp_path: Path) -> None:
    out = tmp_path / "tls"
    result = CliRunner().invoke(app, ["certs", "create", str(out), "--host", "127.0.0.1", "--host", "superlink",
                                      "--client", "operator", "--days", "30"])
    assert result.exit_code == 0, result.output
    info = describe(out / "server.pem")
    assert set(info.sans) == {"IP:127.0.0.1", "DNS:superlink"}
    assert 28 <= info.days_left() <= 30 and not info.is_ca
    assert describe(out / "ca.pem").is_ca
    for key in ("ca.key", "server.key", "clients/operator.key"):
        assert (out / key).stat().st_mode & 0o777 == 0o600, key
    for cert in ("ca.pem", "server.pem", "clients/operator.pem"):
        assert (out / cert).stat().st_mode & 0o077 != 0o077  # public, readable
    # The client certificate is for client auth only, signed by the same CA.
    client = x509.load_pem_x509_certificate((out / "clients" / "operator.pem").read_bytes())
    usage = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert [u.dotted_string for u in usage] == ["1.3.6.1.5.5.7.3.2"]
    assert client.issuer == x509.load_pem_x509_certificate((out / "ca.pem").read_bytes()).subject


def test_a_real_tls_handshake_accepts_the_san_addresses_and_refuses_others(tmp_path: Path) -> None:
    issue(tmp_path, ["127.0.0.1", "superlink.example"])
    assert handshake(tmp_path, "127.0.0.1") == "ok"
    assert handshake(tmp_path, "superlink.example") == "ok"
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch|match"):
        handshake(tmp_path, "other.example")


def test_a_certificate_from_another_ca_is_refused(tmp_path: Path) -> None:
    issue(tmp_path / "ours", ["127.0.0.1"])
    issue(tmp_path / "theirs", ["127.0.0.1"])
    (tmp_path / "ours" / "ca.pem").write_bytes((tmp_path / "theirs" / "ca.pem").read_bytes())
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(tmp_path / "ours", "127.0.0.1")


def test_running_create_again_rotates_the_server_cert_and_keeps_the_ca(tmp_path: Path) -> None:
    first = issue(tmp_path, ["127.0.0.1"])
    ca_before, server_before = describe(first.ca_cert), describe(first.server_cert)
    second = issue(tmp_path, ["127.0.0.1", "::1"])
    assert not second.new_ca and describe(second.ca_cert).fingerprint_sha256 == ca_before.fingerprint_sha256
    assert describe(second.server_cert).fingerprint_sha256 != server_before.fingerprint_sha256
    assert set(describe(second.server_cert).sans) == {"IP:127.0.0.1", "IP:::1"}
    assert handshake(tmp_path, "127.0.0.1") == "ok"  # old ca.pem still trusts the new server cert
    third = issue(tmp_path, ["127.0.0.1"], new_ca=True)
    assert third.new_ca and describe(third.ca_cert).fingerprint_sha256 != ca_before.fingerprint_sha256


@pytest.mark.parametrize("host", ["", "bad host", "-.example..", "x" * 64 + ".example"])
def test_a_bad_address_is_refused_before_anything_is_written(tmp_path: Path, host: str) -> None:
    result = CliRunner().invoke(app, ["certs", "create", str(tmp_path / "tls"), "--host", host])
    assert result.exit_code == 1 and "--host" in result.output
    assert not (tmp_path / "tls").exists()


def test_validity_is_bounded_and_a_mismatched_ca_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match="between 1 and"):
        issue(tmp_path / "a", ["127.0.0.1"], days=0)
    issue(tmp_path / "a", ["127.0.0.1"])
    issue(tmp_path / "b", ["127.0.0.1"])
    (tmp_path / "a" / "ca.key").write_bytes((tmp_path / "b" / "ca.key").read_bytes())
    with pytest.raises(CertificateError, match="does not belong"):
        load_ca(tmp_path / "a")


def test_expired_certificates_and_readable_keys_are_refused_naming_the_file(tmp_path: Path) -> None:
    issue(tmp_path, ["127.0.0.1"])
    ca_cert, ca_key = load_ca(tmp_path)
    cert, _ = issue_leaf(ca_cert, ca_key, "old", sans=["127.0.0.1"], server=True, days=1)
    # Re-sign the same certificate with a validity that ended yesterday.
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=2)
    expired = (x509.CertificateBuilder().subject_name(cert.subject).issuer_name(cert.issuer)
               .public_key(cert.public_key()).serial_number(cert.serial_number)
               .not_valid_before(past).not_valid_after(past + dt.timedelta(days=1)).sign(ca_key, cert.signature_hash_algorithm))
    (tmp_path / "expired.pem").write_bytes(expired.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(CertificateError, match="expired.pem: certificate expired"):
        check_tls_files(tmp_path / "ca.pem", tmp_path / "expired.pem")
    (tmp_path / "server.key").chmod(0o644)
    with pytest.raises(CertificateError, match="server.key: TLS private key is readable"):
        check_tls_files(tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key")
    (tmp_path / "server.key").chmod(0o600)
    check_tls_files(tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key")


def test_certs_show_lists_expiry_and_fails_when_a_certificate_expires_soon(tmp_path: Path) -> None:
    issue(tmp_path, ["127.0.0.1"], days=10)
    ok = CliRunner().invoke(app, ["certs", "show", str(tmp_path), "--warn-days", "5"], env={"COLUMNS": "200"})
    assert ok.exit_code == 0, ok.output
    assert "IP:127.0.0.1" in ok.output and "server.pem" in ok.output
    soon = CliRunner().invoke(app, ["certs", "show", str(tmp_path), "--warn-days", "30"])
    assert soon.exit_code == 1 and "expires within 30 days" in soon.output
    empty = CliRunner().invoke(app, ["certs", "show", str(tmp_path / "none")], env={"COLUMNS": "300"})
    assert empty.exit_code == 1 and "no certificates" in empty.output
