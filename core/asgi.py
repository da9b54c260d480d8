"""ASGI middleware shared by fedcrm's HTTP APIs: body limits while streaming, and a safe access log.

* :class:`BodyLimit` refuses a request body above its limit with 413 *as soon as* the limit is
  passed: at once when ``Content-Length`` declares more, otherwise on the chunk that crosses it,
  so an oversized upload is never read whole (or buffered) first.
* :class:`AccessLog` writes one structured line per request naming the **route template**
  (``/subjects/{pseudonym}``), never the path or the query string, so pseudonyms, ids and
  anything pasted into a URL stay out of logs. Serve with uvicorn's own access log off.

Hand-written because they are a few lines on the ASGI interface; Starlette's middleware
helpers buffer or cannot see the matched route.

The conventions the consent API and the operator API share live here too, so that the two
answer alike: :class:`Problem` error bodies (``{"detail": "<what, naming the field>"}``) and
their OpenAPI entries (:func:`error_responses`), bearer-token checks that refuse a token in the
URL and a role that may not (:func:`authorize`), the exception → status handlers
(:func:`add_error_handlers`), and both middlewares in the right order (:func:`add_middleware`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from fedcrm.errors import AuthorizationError, ConfigError, FedcrmError
from fedcrm.logging import get_logger
from fedcrm.token_files import TokenRecord

__all__ = [
    "TOKEN_PARAMS",
    "AccessLog",
    "ApiModel",
    "BodyLimit",
    "Problem",
    "RequestTooLarge",
    "add_error_handlers",
    "add_middleware",
    "authenticate",
    "authorize",
    "error_responses",
    "route_template",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class RequestTooLarge(StarletteHTTPException):
    """A request body passed its limit (answered 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than {limit} bytes")


async def _send_json(send: Send, status: int, body: Mapping[str, Any]) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class BodyLimit:
    """Limit request bodies to ``default`` bytes, or to ``per_path[path]`` for the paths named."""

    def __init__(self, app: ASGIApp, *, default: int, per_path: Mapping[str, int] | None = None) -> None:
        self.app, self.default, self.per_path = app, default, dict(per_path or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.per_path.get(scope["path"], self.default)
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None:
            if not declared.isdigit():
                await _send_json(send, 400, {"detail": "Content-Length is not a number"})
                return
            if int(declared) > limit:
                # Refused before a byte of the body is read.
                await _send_json(send, 413, {"detail": f"request body is larger than {limit} bytes"})
                return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise RequestTooLarge(limit)
            return message

        await self.app(scope, limited, send)


def route_template(app: Any, scope: Scope) -> str:
    """The path template of the route ``scope`` matches (``<unmatched>`` if none)."""
    matched = scope.get("route")  # FastAPI stores the route it dispatched to
    if matched is not None and hasattr(matched, "path"):
        return str(matched.path)
    partial = "<unmatched>"
    for route in getattr(app, "routes", ()):
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return str(getattr(route, "path", partial))
        if match == Match.PARTIAL and partial == "<unmatched>":
            partial = str(getattr(route, "path", partial))  # the path matched, the method did not
    return partial


class AccessLog:
    """One log record per HTTP request: method, route template, status, duration, principal.

    ``principal`` is what the app stores in ``request.state.principal`` (e.g. a token's name),
    never a secret. ``routes_of`` is the app whose routes give the templates.
    """

    def __init__(self, app: ASGIApp, *, routes_of: Any, logger: str = "fedcrm.access") -> None:
        self.app, self.routes_of, self.log = app, routes_of, get_logger(logger)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees if the app fails before answering

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            state = scope.get("state") or {}
            self.log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "route": route_template(self.routes_of, scope),
                    "status": status,
                    "ms": round((time.perf_counter() - started) * 1000, 1),
                    "principal": state.get("principal", "-"),
                    "client": (scope.get("client") or ("-",))[0],
                },
            )


# --- the conventions of fedcrm's JSON APIs ---------------------------------------------------


class ApiModel(BaseModel):
    """Base of request and response bodies: unknown fields refused, values frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Problem(ApiModel):
    """Error body: what was wrong, in words."""

    detail: str


_ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Bad request (names the field)",
    401: "Missing or unknown bearer token",
    403: "The token's role may not do this",
    404: "No such resource",
    409: "Not possible in the current state (names why)",
    413: "Request body over the limit (refused while streaming)",
    422: "Invalid parameters or body (names the field)",
    503: "The server cannot serve requests right now (misconfigured)",
}

#: Query parameters that look like a credential: refused, because URLs end up in logs and histories.
TOKEN_PARAMS = frozenset({"token", "access_token", "api_key", "apikey", "bearer"})


def error_responses(descriptions: Mapping[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for every error status, each a :class:`Problem`; ``descriptions`` overrides texts."""
    texts = {**_ERROR_DESCRIPTIONS, **(descriptions or {})}
    return {status: {"model": Problem, "description": text} for status, text in texts.items()}


def authenticate(request: Request, token: str | None, *, log: logging.Logger) -> TokenRecord:
    """The record of ``token`` in the app's token store (``app.state.tokens``); names the principal.

    Refuses a token sent in the URL (400), a missing or unknown one (401, ``AuthorizationError``),
    and everyone while the token file is unusable (503, logged for the operator).
    """
    if TOKEN_PARAMS & {k.lower() for k in request.query_params}:
        raise HTTPException(400, "tokens are accepted only in the 'Authorization: Bearer' header, never in the URL; "
                                 "revoke a token that was sent in one")
    try:
        record: TokenRecord = request.app.state.tokens.authenticate(token)
    except ConfigError as exc:
        log.error("token file unusable; refusing every request", extra={"problem": str(exc)})
        raise HTTPException(503, "the server's token file is unusable; its operator has been told (see the log)") from None
    request.state.principal = record.name
    return record


def authorize(request: Request, credentials: HTTPAuthorizationCredentials | None, roles: tuple[str, ...], *,
              log: logging.Logger) -> TokenRecord:
    """:func:`authenticate` the bearer ``credentials``, then refuse (403) a role not in ``roles``."""
    record = authenticate(request, credentials.credentials if credentials else None, log=log)
    if record.role not in roles:
        route = request.scope.get("route")
        raise HTTPException(403, f"role '{record.role}' may not {request.method} {getattr(route, 'path', request.url.path)}")
    return record


def _problem(status: int) -> Callable[[Request, Exception], JSONResponse]:
    def handle(_request: Request, exc: Exception) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers)

    return handle


def _invalid(_request: Request, exc: Exception) -> JSONResponse:
    """422 with one sentence naming each bad field (``query.start: …``); input values are not echoed."""
    assert isinstance(exc, RequestValidationError)
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ())) or "request"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=422)


def add_error_handlers(app: FastAPI, statuses: Mapping[type[Exception], int]) -> None:
    """Answer each exception class in ``statuses`` with its status and a :class:`Problem` body.

    Always: invalid parameters or body 422 (naming each field), ``AuthorizationError`` 401 (with
    ``WWW-Authenticate: Bearer``), any other ``FedcrmError`` 500. Starlette picks the handler of
    the nearest class in the exception's MRO, so a subclass mapped here wins over its base.
    """
    app.add_exception_handler(RequestValidationError, _invalid)
    for exc_type, status in {AuthorizationError: 401, FedcrmError: 500, **statuses}.items():
        app.add_exception_handler(exc_type, _problem(status))


def add_middleware(app: FastAPI, *, max_body_bytes: int, access_logger: str,
                   per_path: Mapping[str, int] | None = None) -> None:
    """Limit bodies while streaming (:class:`BodyLimit`) inside a route-template access log (:class:`AccessLog`)."""
    app.add_middleware(BodyLimit, default=max_body_bytes, per_path=per_path)
    # Added last, so outermost: the access log sees every answer, the 413s of the body limit included.
    app.add_middleware(AccessLog, routes_of=app, logger=access_logger)
