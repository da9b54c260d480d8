"""The consent API: role-scoped HTTP access to one partner's ledger (FastAPI, docs at /docs).

Roles (bearer tokens from ``consent/tokens.py``): ``auditor`` reads everything,
``partner-writer`` records grants, withdrawals and imports, ``coordinator`` reads tree
heads and proofs only. Authentication and role checks run before any handler, so a refused
request never touches the ledger. Request bodies are strict (no bool→number coercion).

Limits (docs/consent.md §7): bodies are cut off at 64 KiB (20 MiB for a CSV import) while
streaming (413); integers are bounded to 63 bits and timestamps to what UTC can represent (422);
every error body is ``{"detail": "<what, naming the field>"}``. Tokens are read from the
``Authorization`` header only, and the access log names route templates, never paths.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator, AwareDatetime, BeforeValidator, ConfigDict, Field, StrictStr

from fedcrm.asgi import ApiModel, add_error_handlers, add_middleware, authorize, error_responses
from fedcrm.consent.erasure import Erased, ErasureRequest
from fedcrm.consent.events import _PSEUDONYM
from fedcrm.consent.ledger import Ledger
from fedcrm.consent.records import (
    append_consents,
    describe_decode_error,
    import_consents,
    is_rfc3339,
    make_consent,
    to_utc,
)
from fedcrm.consent.report import AuditReport, build_report, render_html, report_period
from fedcrm.consent.subject import SubjectReport, subject_report
from fedcrm.consent.taxonomy import default_vocabulary
from fedcrm.consent.tokens import TokenRecord, TokenStore
from fedcrm.errors import (
    ConsentError,
    ConsentImportError,
    DuplicateReceipt,
    SigningKeyError,
    VocabularyError,
)
from fedcrm.logging import get_logger

__all__ = ["MAX_BODY_BYTES", "MAX_IMPORT_BYTES", "MAX_INDEX", "create_app"]

#: JSON request bodies (a grant or withdrawal is well under 1 KiB).
MAX_BODY_BYTES = 64 * 1024
#: A CSV upload to ``POST /consents/import``.
MAX_IMPORT_BYTES = 20 * 1024 * 1024
#: Log indexes and sizes are signed 64-bit in the database; larger values are refused (422), not a 500.
MAX_INDEX = 2**63 - 1
_PSEUDONYM_PATTERN = _PSEUDONYM.pattern
_VOCAB_PURPOSES = sorted(default_vocabulary().purposes)
_VOCAB_CATEGORIES = sorted(default_vocabulary().categories)
log = get_logger("fedcrm.consent.api")


def _strictly_text(value: Any) -> Any:
    # Timestamps arrive as strings; refuse numbers and numeric strings (pydantic would read "0.5" as
    # Unix time) and anything but RFC 3339 — the same rule as the CSV import.
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not is_rfc3339(value):
        raise ValueError("a timestamp must be an ISO-8601 string with a time zone, e.g. 2025-05-01T09:00:00Z")
    return value


def _pseudonym(value: str) -> str:
    if not _PSEUDONYM.fullmatch(value):
        raise ValueError("must be a pseudonym '<8 hex key id>:<hex HMAC>', never a raw customer id")
    return value


#: A tz-aware timestamp as UTC; one that UTC cannot represent (year 1 at +01:00) is a 422, not a 500.
UtcTime = Annotated[AwareDatetime, BeforeValidator(_strictly_text), AfterValidator(to_utc)]


# --- schemas ------------------------------------------------------------------------------


class Head(ApiModel):
    """A signed tree head (C2SP checkpoint note)."""

    origin: str
    size: int
    root_hash: str = Field(description="base64")
    note: str = Field(description="The full signed note; verify it with the ledger's public key.")


class InclusionProof(ApiModel):
    index: int
    size: int
    leaf_hash: str = Field(description="base64 RFC 9162 leaf hash")
    proof: list[str] = Field(description="base64 hashes, RFC 9162 §2.1.3")


class ConsistencyProof(ApiModel):
    old: int
    new: int
    proof: list[str] = Field(description="base64 hashes, RFC 9162 §2.1.4")


class ConsentRequest(ApiModel):
    """A grant or withdrawal. Omitted categories: every category of the purpose."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    subject: Annotated[StrictStr, AfterValidator(_pseudonym)] = Field(
        json_schema_extra={"pattern": _PSEUDONYM_PATTERN},
        description="Pseudonym '<key_id>:<hex>', never a raw customer id.",
    )
    # The vocabulary's keys are named in the schema (clients and fuzzers see what is accepted); the
    # vocabulary itself still decides, with its own messages.
    purpose: StrictStr = Field(min_length=1, max_length=200, json_schema_extra={"enum": _VOCAB_PURPOSES})
    action: Literal["grant", "withdraw"]
    categories: list[
        Annotated[StrictStr, Field(min_length=1, max_length=200, json_schema_extra={"enum": _VOCAB_CATEGORIES})]
    ] | None = Field(None, max_length=100, description="Default: every category of the purpose.")
    legal_basis: Literal["consent", "contract", "legitimate_interest"] | None = None
    # Timestamps arrive as JSON strings, so only they are parsed leniently (ISO-8601 with a zone).
    effective_at: Annotated[UtcTime | None, Field(strict=False)] = None
    expires_at: Annotated[UtcTime | None, Field(strict=False)] = None
    source: StrictStr = Field(min_length=1, max_length=500)
    notice_version: StrictStr = Field(min_length=1, max_length=100)
    receipt_id: StrictStr | None = Field(None, min_length=1, max_length=200, description="Only with one category.")


class Appended(ApiModel):
    """What a write appended, and the signed head after it."""

    first_index: int
    count: int
    receipt_ids: list[str]
    head: Head


class Verification(ApiModel):
    ok: bool
    checked_size: int
    head_size: int
    message: str
    first_bad_index: int | None
    failure: str


class EventOut(ApiModel):
    index: int
    erased: bool
    leaf_hash: str
    event: dict[str, Any]


# --- auth -----------------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False, description="A token from `fedcrm consent token create`.")
_ERRORS = error_responses({
    409: "A receipt id is already in the ledger (nothing was written)",
    503: "The server cannot sign or authorise right now (misconfigured)",
})


def _role(*roles: str) -> Callable[..., TokenRecord]:
    def check(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
    ) -> TokenRecord:
        return authorize(request, credentials, roles, log=log)

    return check


Auditor = Depends(_role("auditor"))
Reader = Depends(_role("auditor", "coordinator"))
Writer = Depends(_role("partner-writer"))


def _ledger(request: Request) -> Ledger:
    return request.app.state.ledger  # type: ignore[no-any-return]


LedgerDep = Annotated[Ledger, Depends(_ledger)]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _head(ledger: Ledger) -> Head:
    cp = ledger.latest_checkpoint()
    return Head(origin=cp.origin, size=cp.size, root_hash=_b64(cp.root_hash), note=cp.note)


# --- routers, one per resource ----------------------------------------------------------------

heads = APIRouter(prefix="/heads", tags=["heads"], responses=_ERRORS)
proofs = APIRouter(prefix="/proofs", tags=["proofs"], responses=_ERRORS)
consents = APIRouter(prefix="/consents", tags=["consents"], responses=_ERRORS)
subjects = APIRouter(prefix="/subjects", tags=["subjects"], responses=_ERRORS)
audit = APIRouter(tags=["audit"], responses=_ERRORS)


@heads.get("/latest", dependencies=[Reader])
def latest_head(ledger: LedgerDep) -> Head:
    """The newest signed tree head."""
    return _head(ledger)


@proofs.get("/inclusion", dependencies=[Reader])
def inclusion_proof(
    ledger: LedgerDep,
    index: Annotated[int, Query(ge=0, le=MAX_INDEX)],
    size: Annotated[int | None, Query(ge=1, le=MAX_INDEX)] = None,
) -> InclusionProof:
    """Proof that entry ``index`` is in the tree of ``size`` entries (default: the newest head)."""
    size = ledger.tree_size() if size is None else size
    if index >= size or size > ledger.tree_size():
        raise ConsentError(f"index {index} is not in a tree of size {size} (log size {ledger.tree_size()})")
    leaf = ledger.events(index, index + 1)[0].leaf_hash
    proof = [_b64(h) for h in ledger.inclusion_proof(index, size)]
    return InclusionProof(index=index, size=size, leaf_hash=_b64(leaf), proof=proof)


@proofs.get("/consistency", dependencies=[Reader])
def consistency_proof(
    ledger: LedgerDep,
    old: Annotated[int, Query(ge=0, le=MAX_INDEX)],
    new: Annotated[int | None, Query(ge=0, le=MAX_INDEX)] = None,
) -> ConsistencyProof:
    """Proof that the tree of ``new`` entries extends the tree of ``old`` entries."""
    new = ledger.tree_size() if new is None else new
    if old > new or new > ledger.tree_size():
        raise ConsentError(f"need old <= new <= log size {ledger.tree_size()} (got old={old}, new={new})")
    return ConsistencyProof(old=old, new=new, proof=[_b64(h) for h in ledger.consistency_proof(old, new)])


def _appended(ledger: Ledger, events: list[Any], first: int) -> Appended:
    return Appended(first_index=first, count=len(events), receipt_ids=[e.receipt_id for e in events], head=_head(ledger))


@consents.post("", status_code=201, dependencies=[Writer])
def record_consent(body: ConsentRequest, ledger: LedgerDep) -> Appended:
    """Record a grant or a withdrawal (one receipt per data category)."""
    cats = body.categories or list(default_vocabulary().purpose(body.purpose).data_categories)
    if body.receipt_id is not None and len(cats) != 1:
        raise ConsentImportError(f"receipt_id: names one receipt, but this request makes {len(cats)} (give one category)")
    now = datetime.now(UTC)
    events = [
        make_consent(
            subject=body.subject, purpose=body.purpose, category=cat, action=body.action,
            legal_basis=body.legal_basis, effective_at=body.effective_at or now, recorded_at=now,
            expires_at=body.expires_at, source=body.source, notice_version=body.notice_version,
            receipt_id=body.receipt_id,
        )
        for cat in cats
    ]
    head = append_consents(ledger, events)
    return _appended(ledger, events, head.size - len(events))


@consents.post(
    "/import",
    status_code=201,
    dependencies=[Writer],
    openapi_extra={"requestBody": {"required": True, "content": {"text/csv": {"schema": {"type": "string"}}}}},
)
async def import_csv(
    request: Request,
    ledger: LedgerDep,
    x_filename: Annotated[
        str, Header(min_length=1, max_length=200, pattern=r"^[\x20-\x7e]+$", description="Name used in error messages.")
    ] = "upload.csv",
) -> Appended:
    """Import a consent CSV (body ``text/csv``, pseudonyms in a ``subject`` column); all rows or none.

    The body is limited to ``MAX_IMPORT_BYTES`` while it streams in (413 once passed).
    """
    raw = await request.body()  # BodyLimit raises RequestTooLarge (413) on the chunk that passes the limit
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConsentImportError(f"{x_filename}: {describe_decode_error(exc)}") from None
    # Raw customer ids cannot be pseudonymised here (the partner key stays with the partner's tools).
    result = import_consents(ledger, x_filename, text=text)
    events = [s.event for s in ledger.events(result.first_index, result.checkpoint.size)]
    return _appended(ledger, events, result.first_index)


@subjects.get("/{pseudonym}", dependencies=[Auditor])
def subject(
    pseudonym: Annotated[str, PathParam(pattern=_PSEUDONYM_PATTERN, description="'<key_id>:<hex>'")], ledger: LedgerDep
) -> SubjectReport:
    """A subject's consent history, every use of their data, and what withdrawal did and did not undo."""
    return subject_report(ledger, pseudonym)


@subjects.post("/{pseudonym}/erasure", status_code=201, dependencies=[Writer])
def erase(
    pseudonym: Annotated[str, PathParam(pattern=_PSEUDONYM_PATTERN, description="'<key_id>:<hex>'")],
    body: ErasureRequest,
    ledger: LedgerDep,
) -> Erased:
    """Erase a subject's personal data as a logged erasure entry; earlier objections stay in force for good."""
    return Erased.of(ledger.erase_subject(pseudonym, request_id=body.request_id))


@audit.get(
    "/report",
    dependencies=[Auditor],
    response_model=AuditReport,
    responses={200: {"content": {"text/html": {"schema": {"type": "string"}}}, "description": "JSON or HTML"}},
)
def report(
    ledger: LedgerDep,
    start: Annotated[UtcTime | None, Query(description="ISO-8601 with zone; default 30 days before end")] = None,
    end: Annotated[UtcTime | None, Query(description="ISO-8601 with zone (excluded); default now")] = None,
    format: Annotated[Literal["json", "html"], Query()] = "json",  # noqa: A002
) -> Any:
    """The audit report for a period (JSON, or the same report as HTML)."""
    try:
        begin, stop = report_period(start, end)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    built = build_report(ledger, begin, stop)
    return HTMLResponse(render_html(built)) if format == "html" else built


@audit.get("/verify", dependencies=[Auditor])
def verify(ledger: LedgerDep) -> Verification:
    """Recompute every leaf and root and check the newest signed head."""
    r = ledger.verify()
    return Verification(ok=r.ok, checked_size=r.checked_size, head_size=r.head_size, message=r.message,
                        first_bad_index=r.first_bad_index, failure=r.failure)


@audit.get("/events", dependencies=[Auditor])
def events(
    ledger: LedgerDep,
    start: Annotated[int, Query(ge=0, le=MAX_INDEX)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[EventOut]:
    """Log entries ``start`` … ``start + limit - 1`` (personal values read ``<erased>`` once erased)."""
    size = ledger.tree_size()
    if start >= size:
        return []
    return [
        EventOut(index=s.index, erased=s.erased, leaf_hash=_b64(s.leaf_hash), event=s.event.model_dump(mode="json"))
        for s in ledger.events(start, min(start + limit, size))
    ]


# --- the app ----------------------------------------------------------------------------------


def create_app(ledger: Ledger, tokens_path: Path | str) -> FastAPI:
    """The consent API over an open ``ledger``, authorising with the hashed tokens in ``tokens_path``."""
    app = FastAPI(
        title="fedcrm consent API",
        version="1",
        description="Consent receipts, usage records and the verifiable log of one partner.",
        responses=_ERRORS,
    )
    app.state.ledger = ledger
    app.state.tokens = TokenStore(tokens_path)
    for router in (heads, proofs, consents, subjects, audit):
        app.include_router(router)
    # Starlette picks the handler of the nearest class in the MRO: DuplicateReceipt is 409, other import errors 422.
    add_error_handlers(app, {DuplicateReceipt: 409, ConsentImportError: 422, VocabularyError: 422,
                             SigningKeyError: 503, ConsentError: 400})
    add_middleware(app, max_body_bytes=MAX_BODY_BYTES, per_path={"/consents/import": MAX_IMPORT_BYTES},
                   access_logger="fedcrm.consent.access")
    return app
