"""ASGI middleware shared by fedcrm's HTTP APIs: body limits while streaming, and a safe access log.

* :class:`BodyLimit` refuses a request body above its limit with 413 *as soon as* the limit is
  passed: at once when ``Content-Length`` declares more, otherwise on the chunk that crosses it,
  so an oversized upload is never read whole (or buffered) first.
* :class:`AccessLog` writes one structured line per request naming the **route template**
  (``/subjects/{pseudonym}``), never the path or the query string, so pseudonyms, ids and
  anything pasted into a URL stay out of logs. Serve with uvicorn's own access log off.

Hand-written because they are a few lines on the ASGI interface; Starlette's middleware
helpers buffer or cannot see the matched route.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.routing import Match

from fedcrm.logging import get_logger

__all__ = ["AccessLog", "BodyLimit", "RequestTooLarge", "route_template"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class RequestTooLarge(HTTPException):
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
