"""OpenAI-style error bodies and the exception handlers that produce them.

Every failure the server reports has the body

    {"error": {"message": str, "type": str, "param": str | None, "code": int}}

which is what the official ``openai`` client parses (``err.body["message"]``)
and what SGLang's own clients print.  Bad input of any kind (malformed JSON,
unknown fields, wrong types, values the engine rejects with ``ValueError``)
maps to HTTP 400; nothing a client sends can produce a 500 or stop the server.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    503: "service_unavailable",
}


class APIError(Exception):
    """An error with an HTTP status, raised by route code and rendered as JSON.

    Args:
        message: human-readable explanation shown to the client.
        status_code: HTTP status (400 for bad input).
        param: the request field at fault, dotted (e.g. ``"messages.0.role"``), or None.
        err_type: OpenAI error type; derived from ``status_code`` when None.
    """

    def __init__(self, message: str, status_code: int = 400, param: str | None = None,
                 err_type: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.param = param
        self.err_type = err_type or _TYPE_BY_STATUS.get(status_code, "server_error")


def error_body(message: str, status_code: int = 400, param: str | None = None,
               err_type: str | None = None) -> dict[str, Any]:
    """The JSON body for an error: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {
        "message": message,
        "type": err_type or _TYPE_BY_STATUS.get(status_code, "server_error"),
        "param": param,
        "code": status_code,
    }}


def error_response(message: str, status_code: int = 400, param: str | None = None,
                   err_type: str | None = None) -> JSONResponse:
    """A JSONResponse carrying :func:`error_body`."""
    return JSONResponse(error_body(message, status_code, param, err_type), status_code=status_code)


def format_validation_error(exc: RequestValidationError) -> tuple[str, str | None]:
    """Turn pydantic's error list into one message and the first offending field.

    Errors are grouped by request field; the alternatives of a union (``text``
    may be a string or a list) are reported together under the field's name.
    """
    errors = exc.errors()
    if not errors:
        return "Invalid request.", None
    grouped: dict[str | None, list[str]] = {}
    for err in errors:
        loc = tuple(p for p in err.get("loc", ()) if p != "body")
        kind = err.get("type", "")
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        if kind == "json_invalid":
            ctx = err.get("ctx") or {}
            grouped.setdefault(None, []).append(f"Malformed JSON body: {ctx.get('error', msg)}.")
            continue
        field = ".".join(str(p) for p in loc if not _is_union_tag(p)) or None
        if kind == "extra_forbidden":
            msg = "unknown field"
        elif kind == "missing" and field is None:
            msg = "Request body is required."
        elif kind == "missing":
            msg = "field required"
        bucket = grouped.setdefault(field, [])
        if msg not in bucket:
            bucket.append(msg)
    parts = []
    for field, msgs in list(grouped.items())[:5]:
        text = "; ".join(m.rstrip(".") for m in msgs)
        parts.append(f"Invalid '{field}': {text}." if field else text)
    return " ".join(parts), next(iter(grouped))


def _is_union_tag(part: object) -> bool:
    """Pydantic puts the union branch (``str``, ``list[int]``, ``function-after[...]``) into ``loc``."""
    return isinstance(part, str) and (part in {"str", "int", "float", "bool", "dict", "list", "none"}
                                      or "[" in part)


def install_error_handlers(app: FastAPI) -> None:
    from sgl.server.generation import ClientDisconnected

    """Register handlers so that every error leaves the server as OpenAI-style JSON."""

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = format_validation_error(exc)
        return error_response(message, 400, param)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.message, exc.status_code, exc.param, exc.err_type)

    @app.exception_handler(ValueError)
    async def _value_error(_: Request, exc: ValueError) -> JSONResponse:
        return error_response(str(exc) or "Invalid request.", 400)

    @app.exception_handler(ClientDisconnected)
    async def _gone(_: Request, exc: ClientDisconnected) -> JSONResponse:
        return error_response(str(exc), 499)  # nobody reads it: the client is gone

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(str(exc.detail), exc.status_code)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("Internal error while serving %s %s", request.method, request.url.path)
        return error_response(f"Internal server error: {type(exc).__name__}: {exc}", 500)
