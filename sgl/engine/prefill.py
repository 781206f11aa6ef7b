"""Prefill admission: choose which requests extend this step (SGLang's PrefillAdder).

Under a per-step token budget (``max_prefill_tokens``) and the KV pool's free
plus evictable space, requests that already hold a ReqToTokenPool row and need
an extend (the next chunk of a chunked prefill, a jump-forwarded request) go
first; then waiting requests in SchedulePolicy order, each matched against the
prefix cache so only the uncached part is extended. A prompt longer than
``chunked_prefill_size`` is split into chunks over several steps (chunked
prefill). Admission reserves ``new_token_ratio`` of every running request's
remaining ``max_new_tokens`` so decode rarely runs out of KV (retraction
handles it when it does). In-batch prefix caching (as SGLang's lpm does): a
waiting request that shares at least IN_BATCH_PREFIX_THRESHOLD uncached tokens
with a request already in this batch waits one step, then hits the cache
instead of recomputing the shared prefix.
"""

from __future__ import annotations

from typing import List, Optional

import torch

from sgl.engine.cache.base import CacheManager
from sgl.engine.req import Req
from sgl.engine.schedule_batch import ScheduleBatch
from sgl.engine.schedule_policy import match_limit
from sgl.executor.forward_batch import ForwardMode
from sgl.executor.memory_pool import ReqToTokenPool, TokenToKVPool


IN_BATCH_PREFIX_THRESHOLD = 32  # tokens; SGLang's in-batch prefix caching threshold


class PrefillAdder:
    """Forms one extend :class:`~sgl.engine.schedule_batch.ScheduleBatch`. Owns no state across steps.

    Args:
        token_budget: new tokens this step may extend (``max_prefill_tokens``).
        chunk_size: longest extend of one request (``chunked_prefill_size``; <= 0: no chunking).
        new_token_ratio: the share of a request's remaining ``max_new_tokens`` kept free for its decode.
        running: the decoding requests (their reserve is subtracted from the room).
        pool, cache, req_to_token_pool: where KV slots, cached prefixes and request rows come from.
    """

    def __init__(self, token_budget: int, chunk_size: int, new_token_ratio: float, running: List[Req],
                 pool: TokenToKVPool, cache: CacheManager, req_to_token_pool: ReqToTokenPool):
        self.budget = token_budget
        self.chunk = chunk_size if chunk_size > 0 else 1 << 62
        self.new_token_ratio = new_token_ratio
        self.pool, self.cache, self.req_to_token_pool = pool, cache, req_to_token_pool
        self.reserved = sum(self._reserve(r, new_token_ratio) for r in running)
        self.busy = bool(running)  # alone, a request needs no decode reserve
        self.batch = ScheduleBatch(ForwardMode.EXTEND)
        self.chunking = False

    @staticmethod
    def _reserve(r: Req, ratio: float) -> int:
        remaining = max(r.sampling_params.max_new_tokens - len(r.output_ids), 0)
        return int(remaining * ratio)

    def _alloc(self, n: int) -> Optional[torch.Tensor]:
        """n KV slots, evicting from the cache when the pool is short."""
        if self.pool.available_size() < n:
            self.cache.evict(n - self.pool.available_size())
        return self.pool.alloc(n)

    def _room(self) -> int:
        return self.pool.available_size() + self.cache.evictable_size() - self.reserved

    def add_pending(self, reqs: List[Req]) -> List[Req]:
        """Admit requests that already hold a row (chunk continuation, jump-forward). Returns those left over."""
        self.chunking = any(r.kv_len < len(r.input_ids) for r in reqs)
        self.busy = self.busy or bool(reqs)
        left = []
        for r in reqs:
            ext = min(r.extend_remaining, self.chunk, self.budget)
            slots = self._alloc(ext) if ext > 0 and ext <= self._room() + self.reserved else None
            if slots is None:
                left.append(r)
                continue
            self._take(r, ext, slots)
        return left

    def add_waiting(self, waiting: List[Req], max_new: int) -> None:
        """Admit requests from ``waiting`` (already ordered) until a budget runs out; removes the admitted."""
        admitted = []
        for r in waiting:
            if len(admitted) >= max_new or self.budget <= 0:
                break
            ids = r.fill_ids
            m = self.cache.match_prefix(ids[:match_limit(r)])
            if self._shares_with_batch(ids, m.prefix_len + IN_BATCH_PREFIX_THRESHOLD):
                continue  # a request in this batch computes the shared prefix; reuse it next step
            full = r.seq_len - m.prefix_len
            ext = min(full, self.chunk, self.budget)
            if ext < full and (self.chunking or (self.batch.reqs and ext < min(self.chunk, 64))):
                break  # one chunked prefill at a time; no tiny chunks (the next step has a fresh budget)
            self.cache.lock(m.handle)
            reserve = self._reserve(r, self.new_token_ratio)
            busy = self.busy or bool(self.batch.reqs)
            if ext + (reserve if busy else 0) > self._room():
                self.cache.unlock(m.handle)
                break
            row = self.req_to_token_pool.alloc()
            slots = self._alloc(ext) if row is not None else None
            if slots is None:
                if row is not None:
                    self.req_to_token_pool.free(row)
                self.cache.unlock(m.handle)
                break
            r.req_pool_idx = row
            r.prefix_indices = m.kv_indices
            r.last_handle = m.handle
            r.kv_len = m.prefix_len
            if m.prefix_len:
                self.req_to_token_pool.write(row, 0, m.kv_indices)
            if not r.admitted_once:
                r.cached_tokens = m.prefix_len
                r.admitted_once = True
            self.reserved += reserve
            self.chunking = self.chunking or ext < full
            self._take(r, ext, slots)
            self.batch.new_reqs.append(r)
            admitted.append(r)
        for r in admitted:
            waiting.remove(r)

    def _shares_with_batch(self, ids, k: int) -> bool:
        """True if a request admitted in this batch has the same first ``k`` tokens (and more)."""
        if k >= len(ids) - 1:
            return False
        head = ids[:k]
        return any(a.seq_len > k and a.fill_ids[:k] == head for a in self.batch.new_reqs)

    def _take(self, r: Req, ext: int, slots: torch.Tensor) -> None:
        self.req_to_token_pool.write(r.req_pool_idx, r.kv_len, slots)
        self.batch.add(r, ext, slots)
        self.budget -= ext
