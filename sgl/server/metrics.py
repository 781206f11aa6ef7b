"""Prometheus metrics of the HTTP server (``GET /metrics``), via prometheus-client.

Names follow SGLang's ``sglang:*`` metrics with an ``sgl_`` prefix:

- ``sgl_requests_total{route, status}``: finished HTTP requests.
- ``sgl_prompt_tokens_total``, ``sgl_generation_tokens_total``, ``sgl_cached_tokens_total``.
- ``sgl_cache_hit_rate``: cached prompt tokens / prompt tokens since start (0..1).
- ``sgl_num_running_reqs``: generation requests in flight in this server.
- ``sgl_num_queue_reqs``: requests waiting in the engine's queue (read at scrape time).
- ``sgl_time_to_first_token_seconds``, ``sgl_inter_token_latency_seconds``,
  ``sgl_e2e_request_latency_seconds``: histograms in seconds. On streamed
  requests TTFT and ITL are measured as tokens arrive; on the others TTFT comes
  from the engine's ``meta_info["ttft"]`` and ITL is the request's mean.

Each server owns its own ``CollectorRegistry``, so several apps can live in one process.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST, disable_created_metrics

disable_created_metrics()  # no *_created series: they only add noise to scrapes

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.1, 0.2, 0.4, 0.8, 1.6, 5.0)


class ServerMetrics:
    """All metrics of one server plus the helpers routes call.

    Args:
        queue_len_fn: called at scrape time; returns the number of waiting requests
            in the engine (or None when unknown).
    """

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, queue_len_fn: Callable[[], int | None] | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("sgl_requests", "Finished HTTP requests.", ["route", "status"], registry=r)
        self.prompt_tokens = Counter("sgl_prompt_tokens", "Prompt tokens processed.", registry=r)
        self.generation_tokens = Counter("sgl_generation_tokens", "Tokens generated.", registry=r)
        self.cached_tokens = Counter("sgl_cached_tokens", "Prompt tokens served from the prefix cache.",
                                     registry=r)
        self.cache_hit_rate = Gauge("sgl_cache_hit_rate", "Cached prompt tokens / prompt tokens.", registry=r)
        self.cache_hit_rate.set_function(self._hit_rate)
        self.running = Gauge("sgl_num_running_reqs", "Generation requests in flight.", registry=r)
        self.queue = Gauge("sgl_num_queue_reqs", "Requests waiting in the engine queue.", registry=r)
        self._queue_len_fn = queue_len_fn
        self.queue.set_function(self._queue_len)
        self.ttft = Histogram("sgl_time_to_first_token_seconds", "Time to first token (s).",
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("sgl_inter_token_latency_seconds", "Inter-token latency (s).",
                             buckets=_ITL_BUCKETS, registry=r)
        self.e2e = Histogram("sgl_e2e_request_latency_seconds", "End-to-end request latency (s).",
                             buckets=_LATENCY_BUCKETS, registry=r)
        self._prompt = 0
        self._cached = 0

    def _hit_rate(self) -> float:
        return self._cached / self._prompt if self._prompt else 0.0

    def _queue_len(self) -> float:
        try:
            value = self._queue_len_fn() if self._queue_len_fn else None
        except Exception:  # noqa: BLE001 - a scrape must never fail
            value = None
        return float(value) if value is not None else 0.0

    def record_finished(self, meta_info: Mapping[str, Any]) -> None:
        """Count the tokens of one finished generation (an engine ``meta_info`` dict)."""
        prompt = int(meta_info.get("prompt_tokens") or 0)
        completion = int(meta_info.get("completion_tokens") or 0)
        cached = int(meta_info.get("cached_tokens") or 0)
        self.prompt_tokens.inc(prompt)
        self.generation_tokens.inc(completion)
        self.cached_tokens.inc(cached)
        self._prompt += prompt
        self._cached += cached

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class RequestTimer:
    """Latency bookkeeping for one generation request.

    Call :meth:`on_progress` with the cumulative completion-token count each time
    output arrives (streaming), and :meth:`finish` once with the final meta_info.
    """

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics
        self.start = time.perf_counter()
        self._last_time: float | None = None
        self._last_tokens = 0
        metrics.running.inc()
        self._done = False

    def on_progress(self, completion_tokens: int) -> None:
        """Observe TTFT at the first output token and ITL (per token) afterwards."""
        now = time.perf_counter()
        if completion_tokens <= self._last_tokens:
            return
        if self._last_time is None:
            self.metrics.ttft.observe(now - self.start)
        else:
            new = completion_tokens - self._last_tokens
            gap = (now - self._last_time) / new
            for _ in range(new):
                self.metrics.itl.observe(gap)
        self._last_time = now
        self._last_tokens = completion_tokens

    def finish(self, meta_infos: list[Mapping[str, Any]] | None = None) -> None:
        """Record e2e latency and token counts (idempotent; None = aborted, no counts)."""
        if self._done:
            return
        self._done = True
        self.metrics.running.dec()
        e2e = time.perf_counter() - self.start
        self.metrics.e2e.observe(e2e)
        for meta in meta_infos or []:
            self.metrics.record_finished(meta)
            if self._last_time is None and meta.get("ttft") is not None:
                # Not streamed: take TTFT from the engine and spread the rest evenly (mean ITL).
                ttft = float(meta["ttft"])
                self.metrics.ttft.observe(ttft)
                n = int(meta.get("completion_tokens") or 0)
                if n > 1:
                    gap = max(float(meta.get("e2e_latency") or e2e) - ttft, 0.0) / (n - 1)
                    for _ in range(n - 1):
                        self.metrics.itl.observe(gap)
