"""Pure-ASGI middleware: Bearer-token auth and one access-log line per request.

Pure ASGI (not Starlette's ``BaseHTTPMiddleware``) so streamed responses pass
through untouched and client disconnects still reach the route.
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sgl.server.encoding import dumps
from sgl.server.errors import error_body

access_logger = logging.getLogger("sgl.server.access")

PUBLIC_PATHS = frozenset({"/health"})


class APIKeyMiddleware:
    """Require ``Authorization: Bearer <api_key>`` on every path except ``/health``.

    Missing or wrong keys get HTTP 401 with an OpenAI-style error body. The
    comparison is constant-time (``hmac.compare_digest``).
    """

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        got = dict(scope.get("headers") or []).get(b"authorization", b"")
        if hmac.compare_digest(got, self.expected):
            await self.app(scope, receive, send)
            return
        body = dumps(error_body("Invalid or missing API key (send 'Authorization: Bearer <key>').",
                                401)).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})


class AccessLogMiddleware:
    """Log ``client - "METHOD /path HTTP/x" status latency`` once, when the response ends.

    A stream that the client dropped is logged with the status that was sent and
    ``(disconnected)``. ``on_finish(path, status)`` (e.g. a metrics counter) is
    called for every request whether or not logging is on.
    """

    def __init__(self, app: ASGIApp, log: bool = True,
                 on_finish: Callable[[str, int], None] | None = None) -> None:
        self.app = app
        self.log = log
        self.on_finish = on_finish

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500, "done": False}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                status["done"] = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if self.on_finish is not None:
                self.on_finish(scope.get("path", ""), status["code"])
            if self.log:
                self._write(scope, status, start)

    def _write(self, scope: Scope, status: dict, start: float) -> None:
        client = scope.get("client")
        who = f"{client[0]}:{client[1]}" if client else "-"
        path = scope.get("path", "")
        if scope.get("query_string"):
            path += "?" + scope["query_string"].decode("latin-1")
        note = "" if status["done"] else " (disconnected)"
        access_logger.info('%s - "%s %s HTTP/%s" %d %.3fs%s', who, scope.get("method"), path,
                           scope.get("http_version", "1.1"), status["code"],
                           time.perf_counter() - start, note)


class JSONContentTypeMiddleware:
    """Treat every POST body as JSON, whatever its ``Content-Type`` says.

    All POST routes take JSON; ``curl -d '{...}'`` sends
    ``application/x-www-form-urlencoded``, which FastAPI would otherwise not
    parse as JSON (the request would fail validation with a confusing message).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("method") == "POST":
            headers = [(k, v) for k, v in scope.get("headers") or [] if k != b"content-type"]
            headers.append((b"content-type", b"application/json"))
            scope = dict(scope, headers=headers)
        await self.app(scope, receive, send)
