"""The consent API: role-scoped HTTP access to one partner's ledger (FastAPI, docs at /docs).

Roles (bearer tokens from ``consent/tokens.py``): ``auditor`` reads everything,
``partner-writer`` records grants, withdrawals and imports, ``coordinator`` reads tree
heads and proofs only. Authentication and role checks run before any handler, so a refused
request never touches the ledger. Request bodies are strict (no bool→number coercion).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictStr

from fedcrm.consent.ledger import Ledger
from fedcrm.consent.records import import_consents, make_consent
from fedcrm.consent.report import AuditReport, build_report, render_html
from fedcrm.consent.subject import SubjectReport, subject_report
from fedcrm.consent.taxonomy import default_vocabulary
from fedcrm.consent.tokens import TokenRecord, TokenStore
from fedcrm.errors import (
    AuthorizationError,
    ConsentError,
    ConsentImportError,
    FedcrmError,
    SigningKeyError,
    VocabularyError,
)

__all__ = ["create_app"]

_MAX_IMPORT_BYTES = 20 * 1024 * 1024


# --- schemas ------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Problem(_Model):
    """Error body: what was wrong, in words."""

    detail: str


class Head(_Model):
    """A signed tree head (C2SP checkpoint note)."""

    origin: str
    size: int
    root_hash: str = Field(description="base64")
    note: str = Field(description="The full signed note; verify it with the ledger's public key.")


class InclusionProof(_Model):
    index: int
    size: int
    leaf_hash: str = Field(description="base64 RFC 9162 leaf hash")
    proof: list[str] = Field(description="base64 hashes, RFC 9162 §2.1.3")


class ConsistencyProof(_Model):
    old: int
    new: int
    proof: list[str] = Field(description="base64 hashes, RFC 9162 §2.1.4")


class ConsentRequest(_Model):
    """A grant or withdrawal. Omitted categories: every category of the purpose."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    subject: StrictStr = Field(description="Pseudonym '<key_id>:<hex>', never a raw customer id.")
    purpose: StrictStr
    action: Literal["grant", "withdraw"]
    categories: list[StrictStr] | None = None
    legal_basis: Literal["consent", "contract", "legitimate_interest"] | None = None
    # Timestamps arrive as JSON strings, so only they are parsed leniently (ISO-8601 with a zone).
    effective_at: Annotated[AwareDatetime | None, Field(strict=False)] = None
    expires_at: Annotated[AwareDatetime | None, Field(strict=False)] = None
    source: StrictStr = Field(min_length=1)
    notice_version: StrictStr = Field(min_length=1)
    receipt_id: StrictStr | None = None


class Appended(_Model):
    """What a write appended, and the signed head after it."""

    first_index: int
    count: int
    receipt_ids: list[str]
    head: Head


class Verification(_Model):
    ok: bool
    checked_size: int
    head_size: int
    message: str
    first_bad_index: int | None
    failure: str


class EventOut(_Model):
    index: int
    erased: bool
    leaf_hash: str
    event: dict[str, Any]


# --- auth -----------------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False, description="A token from `fedcrm consent token create`.")
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "Bad request (names the field)"},
    401: {"model": Problem, "description": "Missing or unknown bearer token"},
    403: {"model": Problem, "description": "The token's role may not do this"},
    422: {"model": Problem, "description": "Invalid parameters or body"},
}


class _Forbidden(Exception):
    pass


def _role(*roles: str) -> Callable[..., TokenRecord]:
    def check(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
    ) -> TokenRecord:
        store: TokenStore = request.app.state.tokens
        record = store.authenticate(credentials.credentials if credentials else None)
        if record.role not in roles:
            raise _Forbidden(f"role '{record.role}' may not {request.method} {request.url.path}")
        return record

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
    ledger: LedgerDep, index: Annotated[int, Query(ge=0)], size: Annotated[int | None, Query(ge=1)] = None
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
    ledger: LedgerDep, old: Annotated[int, Query(ge=0)], new: Annotated[int | None, Query(ge=0)] = None
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
    now = datetime.now(UTC)
    events = [
        make_consent(
            subject=body.subject, purpose=body.purpose, category=cat, action=body.action,
            legal_basis=body.legal_basis, effective_at=body.effective_at or now, recorded_at=now,
            expires_at=body.expires_at, source=body.source, notice_version=body.notice_version,
            receipt_id=body.receipt_id if len(cats) == 1 else None,
        )
        for cat in cats
    ]
    head = ledger.append(events)
    return _appended(ledger, events, head.size - len(events))


@consents.post(
    "/import",
    status_code=201,
    dependencies=[Writer],
    openapi_extra={"requestBody": {"required": True, "content": {"text/csv": {"schema": {"type": "string"}}}}},
)
async def import_csv(request: Request, ledger: LedgerDep) -> Appended:
    """Import a consent CSV (body ``text/csv``, pseudonyms in a ``subject`` column); all rows or none."""
    raw = await request.body()
    if len(raw) > _MAX_IMPORT_BYTES:
        raise ConsentImportError(f"upload is larger than {_MAX_IMPORT_BYTES} bytes")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConsentImportError(f"upload: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    name = request.headers.get("x-filename", "upload.csv")
    # Raw customer ids cannot be pseudonymised here (the partner key stays with the partner's tools).
    result = import_consents(ledger, name, text=text)
    events = [s.event for s in ledger.events(result.first_index, result.checkpoint.size)]
    return _appended(ledger, events, result.first_index)


@subjects.get("/{pseudonym}", dependencies=[Auditor])
def subject(pseudonym: str, ledger: LedgerDep) -> SubjectReport:
    """A subject's consent history, every use of their data, and what withdrawal did and did not undo."""
    return subject_report(ledger, pseudonym)


@audit.get("/report", dependencies=[Auditor], response_model=AuditReport)
def report(
    ledger: LedgerDep,
    start: Annotated[AwareDatetime | None, Query(description="ISO-8601 with zone; default 30 days before end")] = None,
    end: Annotated[AwareDatetime | None, Query(description="ISO-8601 with zone (excluded); default now")] = None,
    format: Annotated[Literal["json", "html"], Query()] = "json",  # noqa: A002
) -> Any:
    """The audit report for a period (JSON, or the same report as HTML)."""
    stop = end or datetime.now(UTC)
    begin = start or stop - timedelta(days=30)
    if stop <= begin:
        raise ConsentError(f"end {stop.isoformat()} is not after start {begin.isoformat()}")
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
    ledger: LedgerDep, start: Annotated[int, Query(ge=0)] = 0, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[EventOut]:
    """Log entries ``start`` … ``start + limit - 1`` (personal values read ``<erased>`` once erased)."""
    return [
        EventOut(index=s.index, erased=s.erased, leaf_hash=_b64(s.leaf_hash), event=s.event.model_dump(mode="json"))
        for s in ledger.events(start, start + limit)
    ]


# --- the app ----------------------------------------------------------------------------------


def _problem(status: int) -> Callable[[Request, Exception], JSONResponse]:
    def handle(_request: Request, exc: Exception) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers)

    return handle


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
    # Most specific first: Starlette picks the handler of the nearest class in the MRO.
    app.add_exception_handler(AuthorizationError, _problem(401))
    app.add_exception_handler(_Forbidden, _problem(403))
    app.add_exception_handler(ConsentImportError, _problem(422))
    app.add_exception_handler(VocabularyError, _problem(422))
    app.add_exception_handler(SigningKeyError, _problem(503))
    app.add_exception_handler(ConsentError, _problem(400))
    app.add_exception_handler(FedcrmError, _problem(500))
    return app
