"""The server's single path into the engine: request ids, in-flight tracking, streams, aborts.

Routes never call ``engine.async_generate`` directly; they go through
:class:`GenerationService`, which

- gives every request an id (``rid``) when the client did not, so it can be aborted;
- keeps the set of in-flight ids (for ``/abort_request`` with ``abort_all``);
- opens streams *eagerly*: the first chunk is awaited before the HTTP response
  starts, so a request the engine rejects (``ValueError``) still becomes an
  HTTP 400 instead of a broken event stream;
- aborts the engine request when a stream is closed before it finished
  (client disconnect), which releases its KV cache;
- feeds :mod:`sgl.server.metrics`.
"""

from __future__ import annotations

import asyncio

import logging
import uuid
from typing import Any, AsyncIterator

from sgl.server.metrics import RequestTimer, ServerMetrics

logger = logging.getLogger(__name__)


def new_rid() -> str:
    """A fresh request id (32 hex characters)."""
    return uuid.uuid4().hex


def _batch_size(prompt: Any, input_ids: Any) -> int | None:
    """Number of prompts of a batch request, None for a single prompt."""
    if isinstance(prompt, list):
        return len(prompt)
    if isinstance(input_ids, list) and input_ids and isinstance(input_ids[0], list):
        return len(input_ids)
    return None


def _meta_list(out: Any) -> list[dict]:
    if isinstance(out, list):
        return [o.get("meta_info", {}) for o in out]
    return [out.get("meta_info", {})]


class GenerationStream:
    """One streamed engine request, already started (its first chunk is in hand).

    Iterate with ``async for chunk in stream``; each chunk is the engine's
    ``{"text": cumulative_text, "meta_info": {...}}``. Call :meth:`abort` if the
    consumer stops early; it is a no-op once the stream finished.
    """

    def __init__(self, service: "GenerationService", rid: str, first: dict | None,
                 chunks: AsyncIterator[dict], timer: RequestTimer) -> None:
        self.service = service
        self.rid = rid
        self._first = first
        self._chunks = chunks
        self._timer = timer
        self.finished = first is None
        self.last: dict | None = first
        if first is None:
            self._close(None)

    async def __aiter__(self) -> AsyncIterator[dict]:
        if self._first is None:
            return
        chunk = self._first
        self._first = None
        self._timer.on_progress(int(chunk.get("meta_info", {}).get("completion_tokens") or 0))
        yield chunk
        async for chunk in self._chunks:
            self.last = chunk
            self._timer.on_progress(int(chunk.get("meta_info", {}).get("completion_tokens") or 0))
            yield chunk
        self.finished = True
        self._close([self.last.get("meta_info", {})] if self.last else None)

    def _close(self, metas: list[dict] | None) -> None:
        self._timer.finish(metas)
        self.service.inflight.discard(self.rid)

    def abort(self) -> None:
        """Abort the engine request (frees its KV) unless it already finished."""
        if self.finished:
            return
        self.finished = True
        logger.info("Client went away; aborting request %s", self.rid)
        try:
            self.service.engine.abort_request(self.rid)
        finally:
            self._close(None)


DISCONNECT_POLL_S = 1.0  # seconds between client-connection checks of a non-streaming request


class ClientDisconnected(Exception):
    """The HTTP client left before its non-streaming result was ready (the request was aborted)."""


class GenerationService:
    """Wraps an engine's ``async_generate`` for the HTTP routes.

    Args:
        engine: an ``sgl.Engine`` (or anything with the same ``async_generate`` /
            ``abort_request`` methods).
        metrics: the server's :class:`ServerMetrics`.
    """

    def __init__(self, engine: Any, metrics: ServerMetrics) -> None:
        self.engine = engine
        self.metrics = metrics
        self.inflight: set[str] = set()

    async def generate(self, request: Any = None, **kwargs: Any) -> dict | list[dict]:
        """Non-streaming generation; same arguments and result as ``engine.async_generate``.

        With ``request`` (the starlette Request), the client connection is polled every
        DISCONNECT_POLL_S seconds and the generation is aborted (its KV freed) if the client left.

        Raises:
            ValueError: the engine rejected the request (becomes HTTP 400).
            ClientDisconnected: the client went away before the result was ready.
        """
        rids = kwargs.get("rid")
        if rids is None:
            n = _batch_size(kwargs.get("prompt"), kwargs.get("input_ids"))
            rids = new_rid() if n is None else [new_rid() for _ in range(n)]
            kwargs["rid"] = rids
        tracked = rids if isinstance(rids, list) else [rids]
        self.inflight.update(tracked)
        timer = RequestTimer(self.metrics)
        out = None
        try:
            task = asyncio.ensure_future(self.engine.async_generate(**kwargs, stream=False))
            while request is not None:
                done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
                if done:
                    break
                if await request.is_disconnected():
                    task.cancel()  # async_generate aborts its requests when cancelled
                    for rid in tracked:
                        self.engine.abort_request(rid)
                    raise ClientDisconnected(f"client disconnected; aborted {tracked}")
            out = await task
        finally:
            timer.finish(_meta_list(out) if out is not None else None)
            self.inflight.difference_update(tracked)
        return out

    async def open_stream(self, **kwargs: Any) -> GenerationStream:
        """Start a streaming generation and wait for its first chunk.

        Raises:
            ValueError: the engine rejected the request (nothing was streamed yet).
        """
        rid = kwargs.get("rid") or new_rid()
        kwargs["rid"] = rid
        self.inflight.add(rid)
        timer = RequestTimer(self.metrics)
        try:
            chunks = await self.engine.async_generate(**kwargs, stream=True)
            chunks = chunks.__aiter__()
            try:
                first = await chunks.__anext__()
            except StopAsyncIteration:
                first = None
        except BaseException as exc:
            timer.finish(None)
            self.inflight.discard(rid)
            if not isinstance(exc, ValueError):  # cancelled / failed after queueing
                self.engine.abort_request(rid)
            raise
        return GenerationStream(self, rid, first, chunks, timer)

    def abort(self, rid: str) -> None:
        """Abort one request by id (unknown or finished ids are ignored by the engine)."""
        self.engine.abort_request(rid)

    def abort_all(self) -> int:
        """Abort every in-flight request; returns how many were asked to stop."""
        rids = list(self.inflight)
        for rid in rids:
            self.engine.abort_request(rid)
        return len(rids)
