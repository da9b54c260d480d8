"""TLS certificates for a deployment: one CA, a server certificate, client certificates.

Everything is made with ``cryptography``: an ECDSA P-256 CA (``ca.pem``/``ca.key``), a
server certificate for the SuperLink and the HTTP APIs whose subject alternative names
are exactly the addresses given (IP addresses as ``IP:``, names as ``DNS:``), and
optional client certificates (extended key usage *client auth*) for callers of the
operator API. Private keys are written with mode 0600 through ``O_EXCL`` temp files and
renamed into place, so a crash never leaves a readable or half-written key.

Rotation: running :func:`issue` again on the same directory keeps the CA (partners keep
trusting the same ``ca.pem``) and replaces the server and client certificates; a new CA
is made only when there is none or when ``new_ca`` is asked for.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedcrm.errors import CertificateError

CA_CERT, CA_KEY = "ca.pem", "ca.key"
SERVER_CERT, SERVER_KEY = "server.pem", "server.key"
CLIENTS_DIR = "clients"
DEFAULT_DAYS = 365
DEFAULT_CA_DAYS = 3650
MAX_DAYS = 3650
_DNS_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


@dataclass(frozen=True)
class CertInfo:
    """What an operator needs to know about one certificate file."""

    path: Path
    subject: str
    issuer: str
    sans: tuple[str, ...]
    not_after: dt.datetime
    is_ca: bool
    fingerprint_sha256: str

    def days_left(self, now: dt.datetime | None = None) -> int:
        """Whole days until the certificate expires (negative once expired)."""
        now = now or dt.datetime.now(dt.timezone.utc)
        return (self.not_after - now).days


@dataclass(frozen=True)
class IssuedFiles:
    """Paths written by :func:`issue`."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    clients: dict[str, tuple[Path, Path]]
    new_ca: bool


def parse_san(value: str) -> x509.GeneralName:
    """One subject alternative name: an IP address (v4/v6) or a DNS name."""
    value = value.strip()
    if not value:
        raise CertificateError("empty --host: give an IP address or a DNS name")
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        pass
    labels = value.removesuffix(".").split(".")
    if len(value) > 253 or any(not _DNS_LABEL.fullmatch(label) for label in labels):
        raise CertificateError(f"--host {value!r}: not an IP address or a valid DNS name")
    return x509.DNSName(value)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600: temp file created 0600, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(tmp, stat.S_IRUSR | stat.S_IWUSR)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _check_days(days: int, what: str) -> None:
    if not 1 <= days <= MAX_DAYS:
        raise CertificateError(f"{what} must be between 1 and {MAX_DAYS} days, got {days}")


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, days: int,
             now: dt.datetime) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            # A little slack backwards: clocks of partners and coordinator are never exactly equal.
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))


def create_ca(organisation: str, days: int = DEFAULT_CA_DAYS) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA certificate that may only sign end-entity certificates (path length 0)."""
    _check_days(days, "CA validity")
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"{organisation} deployment CA")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (_builder(name, name, key.public_key(), days, now)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def issue_leaf(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, common_name: str, *,
               sans: list[str], server: bool, days: int = DEFAULT_DAYS
               ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A server (``server=True``) or client certificate signed by the CA."""
    _check_days(days, "certificate validity")
    names = [parse_san(s) for s in sans]
    if server and not names:
        raise CertificateError("a server certificate needs at least one --host (the address clients connect to)")
    key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.timezone.utc)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (_builder(subject, ca_cert.subject, key.public_key(), days, now)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False,
                                            crl_sign=False, content_commitment=False, data_encipherment=False,
                                            key_agreement=True, encipher_only=False, decipher_only=False),
                              critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _read_certificate(path: Path, what: str = "certificate") -> x509.Certificate:
    """One PEM certificate; a missing or unreadable file is a ``CertificateError`` naming it."""
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError as exc:
        raise CertificateError(f"{path}: {what} not found") from exc
    except ValueError as exc:
        raise CertificateError(f"{path}: not a PEM certificate ({exc})") from exc


def load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Read ``ca.pem`` and ``ca.key`` from ``directory``; errors name the file."""
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    cert = _read_certificate(cert_path, "CA certificate")
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise CertificateError(f"{key_path}: CA key not found (it is needed to issue certificates)") from exc
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"{key_path}: not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{key_path}: expected an EC private key")
    if cert.public_key().public_numbers() != key.public_key().public_numbers():
        raise CertificateError(f"{key_path} does not belong to {cert_path}")
    return cert, key


def issue(directory: Path, hosts: list[str], *, clients: list[str] | None = None, organisation: str = "fedcrm",
          days: int = DEFAULT_DAYS, ca_days: int = DEFAULT_CA_DAYS, new_ca: bool = False) -> IssuedFiles:
    """Create (or keep) the CA in ``directory`` and issue the server and client certificates.

    Parameters
    ----------
    hosts
        Addresses SuperNodes and API callers use to reach the server: every one becomes a SAN.
    clients
        Names of client certificates to issue under ``clients/NAME.pem``/``NAME.key``.
    new_ca
        Replace an existing CA (every partner must then receive the new ``ca.pem``).
    """
    clients = clients or []
    for name in clients:
        if not name or not set(name) <= _NAME_CHARS or name.startswith("."):
            raise CertificateError(f"--client {name!r}: use letters, digits, '-', '_' or '.'")
    for host in hosts:
        parse_san(host)  # every address checked before anything is written
    directory.mkdir(parents=True, exist_ok=True)
    made_ca = new_ca or not (directory / CA_CERT).exists()
    if made_ca:
        ca_cert, ca_key = create_ca(organisation, ca_days)
        _write_private(directory / CA_KEY, _key_pem(ca_key))
        _write_public(directory / CA_CERT, ca_cert.public_bytes(serialization.Encoding.PEM))
    else:
        ca_cert, ca_key = load_ca(directory)
    server_cert, server_key = issue_leaf(ca_cert, ca_key, hosts[0] if hosts else "server", sans=hosts,
                                         server=True, days=days)
    _write_private(directory / SERVER_KEY, _key_pem(server_key))
    _write_public(directory / SERVER_CERT, server_cert.public_bytes(serialization.Encoding.PEM))
    written: dict[str, tuple[Path, Path]] = {}
    for name in clients:
        cert, key = issue_leaf(ca_cert, ca_key, name, sans=[], server=False, days=days)
        cert_path, key_path = directory / CLIENTS_DIR / f"{name}.pem", directory / CLIENTS_DIR / f"{name}.key"
        _write_private(key_path, _key_pem(key))
        _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        written[name] = (cert_path, key_path)
    return IssuedFiles(directory / CA_CERT, directory / CA_KEY, directory / SERVER_CERT, directory / SERVER_KEY,
                       written, made_ca)


def describe(path: Path) -> CertInfo:
    """Subject, SANs, expiry and fingerprint of one PEM certificate file."""
    cert = _read_certificate(path)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = tuple([f"IP:{v}" for v in san.get_values_for_type(x509.IPAddress)]
                     + [f"DNS:{v}" for v in san.get_values_for_type(x509.DNSName)])
    except x509.ExtensionNotFound:
        sans = ()
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    return CertInfo(path, cert.subject.rfc4514_string(), cert.issuer.rfc4514_string(), sans,
                    cert.not_valid_after_utc, is_ca, cert.fingerprint(hashes.SHA256()).hex(":"))


def certificate_files(directory: Path) -> list[Path]:
    """Every certificate :func:`issue` writes that exists in ``directory`` (CA first)."""
    found = [directory / CA_CERT, directory / SERVER_CERT, *sorted((directory / CLIENTS_DIR).glob("*.pem"))]
    return [p for p in found if p.exists()]


def check_tls_files(ca: Path, cert: Path | None = None, key: Path | None = None) -> None:
    """Fail early, naming the file, when a TLS file is missing, expired or (for keys) readable by others."""
    for path in (p for p in (ca, cert) if p is not None):
        info = describe(path)
        if info.days_left() < 0:
            raise CertificateError(f"{path}: certificate expired on {info.not_after:%Y-%m-%d}; "
                                   "re-issue it with `fedcrm certs create`")
    if key is not None:
        if not key.exists():
            raise CertificateError(f"{key}: TLS private key not found")
        if key.stat().st_mode & 0o077:
            raise CertificateError(f"{key}: TLS private key is readable by group/others (chmod 600 it)")
