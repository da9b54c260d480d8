"""TLS and SuperNode authentication for the coordinator's Flower processes.

One place turns the operator's choice (a certificate directory from ``fedcrm certs
create``, node authentication on or off, or an explicit ``--insecure``) into
``flower-superlink`` flags and into the ``[superlink.NAME]`` connection that ``flwr run``
and ``flwr supernode register`` read. It also reads the SuperLink's log for refused
SuperNodes: Flower logs the refused node's public key (PEM); we log its fingerprint,
which is what a partner and the operator compare.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedcrm.certs import CA_CERT, SERVER_CERT, SERVER_KEY, check_tls_files
from fedcrm.errors import CoordinatorError
from fedcrm.logging import get_logger
from fedcrm.node_keys import fingerprints_in_text

log = get_logger(__name__)

INSECURE_WARNING = ("--insecure: the SuperLink speaks plain HTTP and accepts any SuperNode; traffic and partners "
                    "are not authenticated. Use it on loopback for tests only.")
# Flower's API error codes (flwr/supercore/error/base.py): a keyless node tried to register
# itself while authentication is on (2001); a key the operator never registered (2004).
REFUSAL_CODES = {"2001": "keyless or self-registering SuperNode refused", "2004": "SuperNode key not registered"}
_REFUSAL = re.compile(r"ApiError:(2001|2004)\]")


def superlink_security_args(tls_dir: Path | None, node_auth: bool) -> list[str]:
    """``flower-superlink`` flags: TLS from ``tls_dir`` (+ node auth), or ``--insecure`` when it is None."""
    if tls_dir is None:
        if node_auth:
            raise CoordinatorError("SuperNode authentication needs TLS: give the certificate directory (--certs DIR)")
        return ["--insecure"]
    ca, cert, key = tls_dir / CA_CERT, tls_dir / SERVER_CERT, tls_dir / SERVER_KEY
    check_tls_files(ca, cert, key)
    args = ["--ssl-ca-certfile", str(ca.resolve()), "--ssl-certfile", str(cert.resolve()),
            "--ssl-keyfile", str(key.resolve())]
    return args + (["--enable-supernode-auth"] if node_auth else [])


def connection_toml(name: str, address: str, root_certificates: Path | None) -> str:
    """A ``$FLWR_HOME/config.toml`` holding one SuperLink connection (the default)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise CoordinatorError(f"--superlink {address!r}: expected HOST:PORT")
    if root_certificates is not None:
        check_tls_files(root_certificates)
        security = f"root-certificates = {json.dumps(str(root_certificates.resolve()))}\n"
    else:
        security = "insecure = true\n"
    return (f"# Written by fedcrm.\n[superlink]\ndefault = \"{name}\"\n\n"
            f"[superlink.{name}]\naddress = \"{address}\"\n{security}")


@dataclass(frozen=True)
class Refusal:
    """One SuperNode the SuperLink refused, as its log tells it."""

    reason: str
    fingerprints: tuple[str, ...]
    line: str


def refusals_in_log(log_path: Path) -> list[Refusal]:
    """Every refused SuperNode in a SuperLink log, with the fingerprint of the key it offered (if any)."""
    if not log_path.exists():
        return []
    found = []
    for line in log_path.read_text(errors="replace").splitlines():
        match = _REFUSAL.search(line)
        if not match:
            continue
        found.append(Refusal(REFUSAL_CODES[match.group(1)], tuple(fingerprints_in_text(line)), line.strip()))
    return found


class RefusalWatcher:
    """Follow a SuperLink log; log each refused SuperNode with its key fingerprint.

    Each refusal is logged (``fedcrm.coordinator.link_security``, structured extras
    ``reason`` and ``node_key_fingerprint``), appended to ``refusals.jsonl`` beside the log,
    and passed to ``on_refusal``.
    """

    def __init__(self, log_path: Path, on_refusal: Callable[[Refusal], None] | None = None,
                 interval_s: float = 1.0) -> None:
        self.log_path = log_path
        self.on_refusal = on_refusal
        self.interval_s = interval_s
        self._seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="superlink-refusals", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.poll()  # whatever was logged last

    def poll(self) -> list[Refusal]:
        """Handle refusals logged since the last poll; returns them."""
        new = refusals_in_log(self.log_path)[self._seen:]
        self._seen += len(new)
        for refusal in new:
            fingerprint = ", ".join(refusal.fingerprints) or "none"
            log.warning("SuperLink refused a SuperNode", extra={"reason": refusal.reason,
                                                                 "node_key_fingerprint": fingerprint})
            with (self.log_path.parent / "refusals.jsonl").open("a") as out:
                out.write(json.dumps({"ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                      "reason": refusal.reason, "node_key_fingerprints": list(refusal.fingerprints)})
                          + "\n")
            if self.on_refusal is not None:
                self.on_refusal(refusal)
        return new

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll()


def tls_choice(superlink: str | None, root_certificates: Path | None, insecure: bool) -> Path | None:
    """The CA to trust for ``--superlink``, or None for an explicit ``--insecure`` (logged as a warning)."""
    if superlink is None:
        if root_certificates is not None or insecure:
            raise CoordinatorError("--root-certificates/--insecure only apply with --superlink")
        return None
    if insecure == (root_certificates is not None):
        raise CoordinatorError("with --superlink choose --root-certificates CA.pem (TLS) or --insecure "
                               "(loopback tests only)")
    if insecure:
        log.warning(INSECURE_WARNING)
    return root_certificates
