"""Customer overlap between two partners: cardinality-only private set intersection (openmined.psi).

The contact identifiers stay at home (``[contacts]`` in the partner config: a CSV of customer id,
e-mail, phone); they are normalised here, passed through the consent gate for the overlap's
purpose (default ``audience_overlap``, which must be allowed by the partner's policy: its
``privacy.purposes`` allow-list, its vocabulary and the purpose's data categories), and only
then turned into PSI messages. The protocol (openmined.psi 2.0.6, ECDH-PSI with
``reveal_intersection=False``):

1. ``request`` — the *counting* partner encrypts its identifiers under a fresh key (kept in its
   node state, never sent) and sends the request;
2. ``respond`` — the other partner, seeing only encrypted points, answers with a setup message
   (its own identifiers, encrypted under its key, in a Bloom-free raw set) and the
   re-encrypted request; it learns nothing but the request's size;
3. ``count`` — the counting partner learns the intersection *size* only (the response is
   shuffled; which identifiers matched stays unknown to it) and sends that count if it is at
   least its minimum count, else withholds it.

The coordinator relays opaque bytes; it learns the count and each side's number of
identifiers (message sizes). Each partner's gate records the use (purpose, run, session,
counterpart) in its own consent ledger.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd

from fedcrm.client.approvals import purpose_problems
from fedcrm.client.config import PartnerConfig
from fedcrm.client.ingest import read_contacts
from fedcrm.client.pseudonymise import load_key, pseudonymise_series
from fedcrm.client.vocabulary import vocabulary_for_gate
from fedcrm.consent.gate import UsageContext, gate
from fedcrm.consent.ledger import Ledger
from fedcrm.consent.policy import check_category
from fedcrm.errors import OrderRefused
from fedcrm.protocol import OverlapOrder, OverlapReply

#: Data category of each identifier kind.
CATEGORIES = {"email": "user.contact.email", "phone": "user.contact.phone_number"}
#: False-positive rate of the PSI setup (openmined.psi); with the raw set it is exact anyway.
FPR = 1e-9
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def normalise_email(value: str) -> str | None:
    """Trimmed, lower-cased address; None when it is not an address."""
    text = value.strip().lower()
    return text if _EMAIL.match(text) else None


def normalise_phone(value: str, default_country_code: str = "") -> str | None:
    """Digits in international form (``+``/``00`` prefix dropped; a national leading ``0`` gets the
    partner's default country code); None with fewer than 7 digits."""
    text = value.strip()
    digits = re.sub(r"\D", "", text)
    if text.startswith("+"):
        pass
    elif digits.startswith("00"):
        digits = digits[2:]
    elif digits.startswith("0") and default_country_code:
        digits = default_country_code + digits[1:]
    return digits if len(digits) >= 7 else None


def policy_problems(config: PartnerConfig, purpose: str, kinds: tuple[str, ...]) -> list[str]:
    """Why this partner's policy does not allow PSI on ``kinds`` for ``purpose`` (empty: it does)."""
    problems, vocab = purpose_problems(config, purpose)
    if vocab is None:
        return problems
    for kind in kinds:
        decision = check_category(purpose, CATEGORIES[kind], vocabulary=vocab)
        if not decision.allowed:
            problems.append(f"{kind}: {decision.reason}")
    return problems


@dataclass(frozen=True)
class ConsentedIdentifiers:
    """Normalised identifiers of consented customers, and the ledger head after the use was recorded."""

    items: list[str]
    at: datetime
    head: str


def consented_identifiers(config: PartnerConfig, ledger: Ledger, *, kind: str, purpose: str, at: datetime,
                          use: UsageContext) -> ConsentedIdentifiers:
    """Normalised, de-duplicated identifiers of ``kind`` of the customers the gate lets through for ``purpose``."""
    if kind not in CATEGORIES:
        raise OrderRefused(f"partner {config.name}: unknown identifier kind '{kind}'")
    contacts = read_contacts(config)
    frame = pd.DataFrame({"subject": pseudonymise_series(contacts["customer_id"], load_key(config.key_path)),
                          kind: contacts[kind]})
    view = gate(frame, {kind: CATEGORIES[kind]}, purpose, at, [kind], ledger=ledger, use=use,
                vocabulary=vocabulary_for_gate(config, ledger))
    raw = view.frame[kind].astype(str)
    if kind == "email":
        values = raw.map(normalise_email)
    else:
        code = config.contacts.default_country_code if config.contacts else ""
        values = raw.map(lambda v: normalise_phone(v, code))
    items = sorted({f"{kind}:{v}" for v in values.dropna()})
    return ConsentedIdentifiers(items=items, at=view.at, head=ledger.latest_checkpoint().note)


# -- the three PSI steps (openmined.psi) ---------------------------------------------------------

def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def psi_request(items: list[str]) -> tuple[str, bytes]:
    """Step 1 (counting partner): the request, and the private key to keep at home."""
    import private_set_intersection.python as psi

    client = psi.client.CreateWithNewKey(False)
    request = client.CreateRequest(items)
    return _b64(request.SerializeToString()), client.GetPrivateKeyBytes()


def psi_respond(items: list[str], request_b64: str) -> tuple[str, str]:
    """Step 2 (other partner): setup message (its encrypted identifiers) and the processed request."""
    import private_set_intersection.python as psi

    request = psi.Request()
    request.ParseFromString(_unb64(request_b64))
    server = psi.server.CreateWithNewKey(False)
    setup = server.CreateSetupMessage(FPR, len(request.encrypted_elements), items, psi.DataStructure.RAW)
    response = server.ProcessRequest(request)
    return _b64(setup.SerializeToString()), _b64(response.SerializeToString())


def psi_count(key: bytes, setup_b64: str, response_b64: str) -> int:
    """Step 3 (counting partner): the size of the intersection, nothing else."""
    import private_set_intersection.python as psi

    client = psi.client.CreateFromKey(key, False)
    setup, response = psi.ServerSetup(), psi.Response()
    setup.ParseFromString(_unb64(setup_b64))
    response.ParseFromString(_unb64(response_b64))
    return int(client.GetIntersectionSize(setup, response))


def contacts_path(config: PartnerConfig) -> Path | None:
    """Where the partner's contact identifiers live (None without a [contacts] section)."""
    return config.resolve(config.contacts.path) if config.contacts else None


# -- answering the relayed orders -----------------------------------------------------------------

def _refuse_unless_allowed(config: PartnerConfig, order: OverlapOrder) -> None:
    problems = policy_problems(config, order.purpose, tuple(order.identifiers))
    if problems:
        raise OrderRefused(f"partner {config.name} refuses the overlap with {order.counterpart} for purpose "
                           f"'{order.purpose}': " + "; ".join(problems))


def answer_overlap(config: PartnerConfig, order: OverlapOrder, keys: dict[str, bytes]) -> OverlapReply:
    """One PSI step for ``order``; ``keys`` is the partner's node-local store of PSI keys (never sent)."""
    from datetime import UTC

    from fedcrm.client.approvals import open_partner_ledger

    if order.counterpart == config.name:
        raise OrderRefused(f"partner {config.name}: an overlap with itself was asked")
    if len(order.identifiers) != 1:
        raise OrderRefused(f"partner {config.name}: one identifier kind per overlap session "
                           f"(asked {list(order.identifiers)})")
    kind = order.identifiers[0]
    with open_partner_ledger(config) as ledger:
        if order.step == "count":
            key = keys.pop(order.session, None)
            if key is None:
                raise OrderRefused(f"partner {config.name}: no PSI request of session {order.session} to count")
            count = psi_count(key, order.setup, order.payload)
            shown = count if count >= config.privacy.min_count else None
            return OverlapReply(partner=config.name, step="count", count=shown,
                                ledger_checkpoint=ledger.latest_checkpoint().note)
        _refuse_unless_allowed(config, order)
        use = UsageContext(job_id=order.run_id, partner=config.name,
                           model_version=f"{order.run_id}:overlap:{order.session}:{order.counterpart}", stage="overlap")
        held = consented_identifiers(config, ledger, kind=kind, purpose=order.purpose, at=datetime.now(UTC), use=use)
        if len(held.items) < config.privacy.min_count:
            raise OrderRefused(f"partner {config.name}: fewer identifiers than its minimum count for the overlap")
        if order.step == "request":
            request, key = psi_request(held.items)
            keys[order.session] = key
            return OverlapReply(partner=config.name, step="request", payload=request, ledger_checkpoint=held.head)
        setup, response = psi_respond(held.items, order.payload)
        return OverlapReply(partner=config.name, step="respond", setup=setup, payload=response,
                            ledger_checkpoint=held.head)
