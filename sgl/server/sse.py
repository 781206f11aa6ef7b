"""Server-sent events (SSE) framing and a streaming response that reports early closes.

Format (https://html.spec.whatwg.org/multipage/server-sent-events.html), as
SGLang and OpenAI use it: each event is ``data: <json>\\n\\n`` and the stream is
closed by ``data: [DONE]\\n\\n``.
"""

from __future__ import annotations

import logging
from typing import Any, AsyncIterator, Callable

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from sgl.server.encoding import dumps

logger = logging.getLogger(__name__)

DONE_EVENT = "data: [DONE]\n\n"


def sse_event(payload: Any) -> str:
    """Frame one JSON-serialisable payload as an SSE ``data:`` event."""
    return "data: " + dumps(payload) + "\n\n"


class EventStreamResponse(StreamingResponse):
    """A ``text/event-stream`` response that calls ``on_incomplete`` if it did not finish.

    Starlette cancels the body iterator when the client disconnects (ASGI
    ``http.disconnect``) or raises when a send fails; in both cases the events
    iterator never reaches its end. ``on_incomplete`` (e.g. aborting the engine
    request so its KV cache is freed) then runs exactly once, after the iterator
    has been closed.

    Args:
        events: async iterator of already-framed SSE strings (see :func:`sse_event`).
        on_incomplete: zero-argument callback run when the stream stops early.
    """

    def __init__(self, events: AsyncIterator[str], on_incomplete: Callable[[], None]) -> None:
        self._events = events
        self._on_incomplete = on_incomplete
        self.completed = False
        super().__init__(self._tracked(), media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _tracked(self) -> AsyncIterator[str]:
        async for event in self._events:
            yield event
        self.completed = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if not self.completed:
                try:
                    await self.body_iterator.aclose()
                    if hasattr(self._events, "aclose"):
                        await self._events.aclose()
                except Exception:  # noqa: BLE001 - closing must not mask the disconnect
                    logger.debug("error while closing an interrupted stream", exc_info=True)
                self._on_incomplete()
