"""SuperNode authentication keys: a partner's EC P-384 key pair and its fingerprint.

Flower authenticates a SuperNode by an OpenSSH-format NIST EC key: the node signs its
requests with the private key (``flower-supernode --auth-supernode-private-key``), and
the SuperLink accepts only public keys the operator registered (``flwr supernode
register KEY.pub``). The partner creates the pair (``fedcrm client init``) and hands
only ``node.key.pub`` to the operator. Both sides name a key by its OpenSSH-style
fingerprint (``SHA256:`` + unpadded base64 of the SHA-256 of the public key blob, as
``ssh-keygen -lf`` prints it), so a partner and the operator can compare it by phone.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import stat
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedcrm.errors import NodeKeyError

PUBLIC_SUFFIX = ".pub"
_PEM_PUBLIC = re.compile(rb"-----BEGIN PUBLIC KEY-----[A-Za-z0-9+/=\s\\n]+?-----END PUBLIC KEY-----")


def public_path(private_path: Path) -> Path:
    """Where the public half of ``private_path`` lives (``node.key`` → ``node.key.pub``)."""
    return private_path.with_name(private_path.name + PUBLIC_SUFFIX)


def fingerprint(public_key: ec.EllipticCurvePublicKey) -> str:
    """OpenSSH-style fingerprint: ``SHA256:<base64>`` of the OpenSSH public key blob."""
    line = public_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    blob = base64.b64decode(line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def create_node_key(private_path: Path, comment: str = "") -> str:
    """Create the key pair (private mode 0600, ``.pub`` beside it); refuse to overwrite. Returns its fingerprint."""
    pub_path = public_path(private_path)
    private_path.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    try:
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise NodeKeyError(f"{private_path}: a node key already exists; refusing to overwrite it "
                           "(the operator has registered its public key)") from exc
    with os.fdopen(fd, "wb") as handle:
        handle.write(private)
    os.chmod(private_path, stat.S_IRUSR | stat.S_IWUSR)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    pub_path.write_bytes(public + (f" {comment}".encode() if comment else b"") + b"\n")
    return fingerprint(key.public_key())


def load_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """Read an OpenSSH public key file; it must be a NIST EC key (what Flower accepts)."""
    try:
        key = serialization.load_ssh_public_key(path.read_bytes())
    except FileNotFoundError as exc:
        raise NodeKeyError(f"{path}: node public key not found") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise NodeKeyError(f"{path}: not an OpenSSH public key ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in ("secp256r1", "secp384r1", "secp521r1"):
        raise NodeKeyError(f"{path}: expected a NIST EC public key (P-256/P-384/P-521), as `fedcrm client init` makes")
    return key


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Read the node's private key, refusing a missing, unparsable or group/other-readable file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise NodeKeyError(f"{path}: node key not found. Run `fedcrm client init --config <partner.toml>` "
                           "to create it, then give the operator the .pub file") from exc
    if path.stat().st_mode & 0o077:
        raise NodeKeyError(f"{path}: node key is readable by group/others (chmod 600 it)")
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except (ValueError, UnsupportedAlgorithm, TypeError) as exc:
        raise NodeKeyError(f"{path}: not an unencrypted OpenSSH private key ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise NodeKeyError(f"{path}: expected an EC private key")
    return key


def fingerprints_in_text(text: str | bytes) -> list[str]:
    """Fingerprints of the PEM public keys quoted in a Flower log line (refusals quote the key)."""
    raw = text.encode() if isinstance(text, str) else text
    found = []
    for match in _PEM_PUBLIC.finditer(raw):
        pem = match.group(0).replace(b"\\n", b"\n")
        try:
            key = serialization.load_pem_public_key(pem)
        except ValueError:
            continue
        if isinstance(key, ec.EllipticCurvePublicKey):
            found.append(fingerprint(key))
    return found
