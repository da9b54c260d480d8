"""The partner's side of SuperNode authentication: sign with the node key, explain a refusal.

Over TLS, ``fedcrm client join`` always starts the SuperNode with the partner's node key
(``privacy.node_key_file``, created by ``fedcrm client init``): a SuperLink with
authentication on admits it only if the operator registered ``node.key.pub``; one
without authentication ignores the key. Over ``--insecure`` no key is sent (Flower
refuses authentication without TLS). When the SuperLink refuses the node, Flower's
SuperNode logs "Exit Code: 305" with the API error (2004: key not registered; 2001: no
key) and exits with status 1; we log the refusal with the fingerprint of the key, the one
the operator must have registered.
"""

from __future__ import annotations

from typing import Protocol

from fedcrm.client.config import PartnerConfig
from fedcrm.logging import get_logger
from fedcrm.node_keys import fingerprint, load_private_key, public_path

log = get_logger(__name__)

class _TlsChoice(Protocol):
    root_certificates: object


def node_key_args(config: PartnerConfig, settings: _TlsChoice) -> list[str]:
    """``--auth-supernode-private-key KEY`` over TLS (the key must exist, mode 0600); nothing over --insecure."""
    if settings.root_certificates is None:
        return []
    load_private_key(config.node_key_path)  # NodeKeyError names the file and `fedcrm client init`
    return ["--auth-supernode-private-key", str(config.node_key_path.resolve())]


def node_fingerprint(config: PartnerConfig) -> str | None:
    """Fingerprint of this partner's node key, or None if it has none (yet)."""
    try:
        return fingerprint(load_private_key(config.node_key_path).public_key())
    except Exception:  # noqa: BLE001 — only for messages: a broken key is reported when join starts
        return None


def refused_by_superlink(config: PartnerConfig) -> bool:
    """Whether the SuperNode's log ends with the SuperLink refusing it (Flower API errors 2001/2004)."""
    log_path = config.work_path.resolve() / "flwr_home" / "supernode.log"
    if not log_path.exists():
        return False
    tail = log_path.read_text(errors="replace")[-4000:]
    return "[code: 2004]" in tail or "[code: 2001]" in tail


def refusal_message(config: PartnerConfig, superlink: str) -> str:
    """Log the SuperLink's refusal of this node (with the key fingerprint) and return what to tell the user."""
    if not refused_by_superlink(config):
        return (f"partner {config.name}: the SuperNode could not connect to {superlink}; "
                f"see {config.work_path / 'flwr_home' / 'supernode.log'}")
    key = node_fingerprint(config)
    log.error("SuperLink refused this SuperNode", extra={"partner": config.name, "superlink": superlink,
                                                        "node_key_fingerprint": key or "none"})
    if key is None:
        return (f"partner {config.name}: the SuperLink at {superlink} refused this SuperNode, which has no node key "
                f"({config.node_key_path}); run `fedcrm client init` and give the operator the .pub file")
    return (f"partner {config.name}: the SuperLink at {superlink} refused this SuperNode — its node key {key} is not "
            f"registered. Send {public_path(config.node_key_path)} to the operator, who runs "
            f"`fedcrm coordinator partners add {config.name} node.key.pub`, and compare the fingerprint by phone.")
