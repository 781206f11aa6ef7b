"""Delivering request results from the scheduler thread to callers (threads or asyncio)."""

from __future__ import annotations

import asyncio
import queue
import time
from typing import Any, Callable, Dict, Optional

from sgl.engine.req import Req


def build_output(r: Req, final: bool) -> Dict[str, Any]:
    """SGLang's result shape: ``{"text", "meta_info"}``; text is cumulative (stop strings trimmed)."""
    meta: Dict[str, Any] = {
        "id": r.rid,
        "prompt_tokens": len(r.input_ids),
        "completion_tokens": len(r.output_ids),
        "cached_tokens": r.cached_tokens,
        "finish_reason": r.finish_reason.to_dict() if (final and r.finish_reason is not None) else None,
        "e2e_latency": (r.finished_time or time.perf_counter()) - r.created_time,
    }
    if r.first_token_time is not None:
        meta["ttft"] = r.first_token_time - r.created_time
    if r.logprob.enabled:
        meta["input_token_logprobs"] = list(r.input_token_logprobs)
        meta["output_token_logprobs"] = list(r.output_token_logprobs)
        if r.logprob.top_logprobs_num:
            meta["input_top_logprobs"] = list(r.input_top_logprobs)
            meta["output_top_logprobs"] = list(r.output_top_logprobs)
    return {"text": r.text, "output_ids": list(r.output_ids), "meta_info": meta}


class OutputSink:
    """Receives snapshots of one request from the scheduler thread.

    ``get()`` blocks (threads); with ``loop`` set, ``aget()`` awaits (asyncio).
    ``on_final`` runs (on the scheduler thread) when the final result is put.
    """

    def __init__(self, loop: Optional[asyncio.AbstractEventLoop] = None,
                 on_final: Optional[Callable[[], None]] = None):
        self.loop = loop
        self.on_final = on_final
        self._q: Any = asyncio.Queue() if loop is not None else queue.Queue()
        self.finished = False

    def put(self, r: Req, final: bool) -> bool:
        """Deliver a snapshot; returns False when the consumer is gone (its event loop closed)."""
        if final and self.on_final is not None:
            self.on_final()
        item = (build_output(r, final), final)
        if self.loop is None:
            self._q.put(item)
            return True
        try:
            self.loop.call_soon_threadsafe(self._q.put_nowait, item)
        except RuntimeError:  # "Event loop is closed": nobody will read this request's results
            return False
        return True

    def get(self, timeout: Optional[float] = None):
        """Next ``(output, final)``; raises TimeoutError after ``timeout`` seconds."""
        try:
            item = self._q.get(timeout=timeout)
        except queue.Empty as e:
            raise TimeoutError(f"no output within {timeout} s") from e
        self.finished = item[1]
        return item

    async def aget(self):
        item = await self._q.get()
        self.finished = item[1]
        return item
