"""Scheduler: the continuous-batching loop (one background thread per Engine).

Each step either runs an extend batch (new requests, the next chunk of a
chunked prefill, or requests that jump-forwarded) or, when nothing can be
admitted, one decode step over all running requests (SGLang's prefill-first
policy). KV comes from the TokenToKVPool; when it runs short the prefix cache
evicts LRU leaves, and when that is not enough running requests are retracted
(their KV released, they re-queue and later resume from their tokens so far).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from concurrent.futures import Future
from typing import Callable, List, Optional

import torch

from sgl.core.config import SchedulerConfig
from sgl.engine.cache.base import CacheManager
from sgl.engine.output_processor import OutputProcessor, StepOutput
from sgl.engine.prefill import PrefillAdder
from sgl.engine.req import Req
from sgl.engine.schedule_batch import ScheduleBatch
from sgl.engine.schedule_policy import SchedulePolicy, make_schedule_policy
from sgl.engine.stats import SchedulerStats
from sgl.engine.stop import FinishReason
from sgl.executor.memory_pool import ReqToTokenPool, TokenToKVPool
from sgl.executor.model_runner import ModelRunner

logger = logging.getLogger("sgl")


class Scheduler:
    """Owns the waiting queue, the running batch, the cache and the model runner.

    Thread model: ``add_request`` / ``call`` may be called from any thread; all
    other methods run on the scheduler thread (``run_forever``).

    Args:
        cfg: the scheduler config (budgets, policy name, retraction ratios, logging).
        runner: runs each step's :class:`~sgl.executor.model_worker_batch.ModelWorkerBatch` and owns
            the KV pools (anything with ``forward(batch) -> logits``, ``token_to_kv_pool`` and
            ``req_to_token_pool``: tests pass a fake).
        cache: the prefix cache over ``runner.token_to_kv_pool``.
        outputs: turns each step's logits into tokens, text and finish reasons.
    """

    def __init__(self, cfg: SchedulerConfig, runner: ModelRunner, cache: CacheManager, outputs: OutputProcessor):
        self.cfg = cfg
        self.runner = runner
        self.pool: TokenToKVPool = runner.token_to_kv_pool
        self.req_to_token_pool: ReqToTokenPool = runner.req_to_token_pool
        self.cache = cache
        self.outputs = outputs
        self.policy: SchedulePolicy = make_schedule_policy(cfg.policy)
        self.waiting: List[Req] = []
        self.running: List[Req] = []
        self.pending: List[Req] = []  # hold a row, need an extend (chunked prefill, jump-forward)
        self.new_token_ratio: float = cfg.init_new_token_ratio
        self.stats = SchedulerStats()
        self._inbox: "queue.Queue" = queue.Queue()
        self._stop = threading.Event()
        self._idle_checked = True
        self._in_flight: List[Req] = []

    # ------------------------------------------------------------ thread-safe API
    def add_request(self, req: Req) -> None:
        """Queue a request. Raises RuntimeError once the scheduler has stopped."""
        if self._stop.is_set():
            raise RuntimeError("the engine has been shut down")
        self._inbox.put(("req", req))

    def call(self, fn: Callable[["Scheduler"], object]) -> Future:
        """Run ``fn(self)`` on the scheduler thread; returns a Future of its result.
        Raises RuntimeError once the scheduler has stopped."""
        if self._stop.is_set():
            raise RuntimeError("the engine has been shut down")
        fut: Future = Future()
        self._inbox.put(("call", (fn, fut)))
        return fut

    def stop(self) -> None:
        self._stop.set()
        self._inbox.put(("noop", None))

    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running) + len(self.pending)

    # ------------------------------------------------------------ loop
    def run_forever(self) -> None:
        try:
            self._loop()
        finally:  # nobody may wait forever on a request the loop will never run
            self._drain_inbox(block=False)
            for r in list(self.running + self.pending + self.waiting):
                r.finish_reason = FinishReason.abort("the engine was shut down")
                self.finish(r)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._drain_inbox(block=self.num_unfinished() == 0)
            if self._stop.is_set():
                break
            try:
                worked = self.step()
            except Exception as e:  # keep serving: fail the batch, not the engine
                logger.error("scheduler step failed: %s\n%s", e, traceback.format_exc())
                self._recover(f"internal error: {e}")
                worked = True
            if worked:
                self._idle_checked = False
            elif not self._idle_checked:
                self._on_idle()

    def _drain_inbox(self, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            kind, payload = item
            if kind == "req":
                self._admit_request(payload)
            elif kind == "call":
                fn, fut = payload
                try:
                    fut.set_result(fn(self))
                except Exception as e:
                    fut.set_exception(e)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _admit_request(self, r: Req) -> None:
        """Queue a new request; one whose grammar already forced text (before any step) is first
        checked against its stop conditions, and finishes at once when that text completes it."""
        if r.output_ids:
            out = StepOutput()
            self.outputs.update_text(r, [], out)
            if out.finished:
                self.finish(r)
                return
        self.waiting.append(r)

    def _on_idle(self) -> None:
        self._idle_checked = True
        if self.cfg.check_integrity_when_idle:
            try:
                self.check_idle_integrity()
            except Exception as e:  # a bug, but keep serving
                logger.error("integrity check failed while idle: %s", e)

    def check_idle_integrity(self) -> None:
        """With no request in flight: the cache is consistent, nothing is locked, and every KV slot is
        either free or owned by the cache. Raises RuntimeError/AssertionError otherwise."""
        self.cache.check_integrity()
        if self.cache.protected_size() != 0:
            raise RuntimeError(f"cache has {self.cache.protected_size()} protected tokens while idle")
        owned = self.pool.available_size() + self.cache.total_size()
        if owned != self.pool.size:
            raise RuntimeError(f"KV slots leaked: {self.pool.available_size()} free + "
                               f"{self.cache.total_size()} cached != {self.pool.size}")

    # ------------------------------------------------------------ one step
    def step(self) -> bool:
        """Run one extend or decode batch. Returns False when there was nothing to do."""
        batch = self._get_prefill_batch()
        if batch is not None and batch.reqs:
            self._in_flight = batch.reqs  # off every queue until the step ends: _recover must see them
            self._run_extend(batch)
            self._in_flight = []
            return True
        if self.running:
            self._run_decode()
            return True
        if self.pending or self.waiting:
            self._unstick()
            return True
        return False

    def _get_prefill_batch(self) -> Optional[ScheduleBatch]:
        if not self.pending and not self.waiting:
            return None
        cfg = self.cfg
        adder = PrefillAdder(cfg.max_prefill_tokens, cfg.chunked_prefill_size, self.new_token_ratio,
                             self.running, self.pool, self.cache, self.req_to_token_pool)
        self.pending = adder.add_pending(self.pending)
        if self.waiting:
            self.policy.sort(self.waiting, self.cache)
            room = cfg.max_running_requests - len(self.running) - len(self.pending) - len(adder.batch.reqs)
            adder.add_waiting(self.waiting, max(room, 0))
        return adder.batch

    def _run_extend(self, batch: ScheduleBatch) -> None:
        t0 = time.perf_counter()
        for r in batch.reqs:
            if r.logprob.start_len == 0 and r.kv_len == 0 and not r.input_logprobs_done:
                self.outputs.record_first_input_logprob(r)
        logits = self.runner.forward(batch.get_model_worker_batch())
        self.stats.on_prefill(batch, self)
        for r, ext in zip(batch.reqs, batch.extend_lens):
            r.kv_len += ext
        for span in batch.logprob_spans:
            self.outputs.record_input_logprobs(span.req, logits[span.first_row:span.first_row + span.count],
                                               span.first_pos)
        done = {id(r) for r, _ in batch.sample_rows}
        for r, ext in zip(batch.reqs, batch.extend_lens):
            # Let the cache own the prompt KV computed so far (every prompt chunk, as SGLang does), so
            # later requests sharing it hit the cache while this one is still running.
            if r.kv_len - ext < len(r.input_ids):
                self._cache_unfinished(r)
            if id(r) not in done:
                self.pending.append(r)
        to_sample = []
        for r, i in batch.sample_rows:
            if r.logprob.start_len is not None:
                r.input_logprobs_done = True
            if len(r.output_ids) >= r.sampling_params.max_new_tokens:  # max_new_tokens == 0: prefill only
                r.finish_reason = FinishReason.length_reached(len(r.output_ids))
                self.finish(r)
            else:
                to_sample.append((r, i))
                self.running.append(r)
        if to_sample:
            reqs = [r for r, _ in to_sample]
            lg = logits[torch.tensor([i for _, i in to_sample])]
            self._apply(self.outputs.process(reqs, lg, self.outputs.sample(reqs, lg)))
        self.stats.step_time += time.perf_counter() - t0

    def _run_decode(self) -> None:
        t0 = time.perf_counter()
        slots = self._alloc_decode_slots()
        if slots is None:
            return
        batch = ScheduleBatch.decode(self.running, slots)
        reqs = batch.reqs
        rows = torch.tensor([r.req_pool_idx for r in reqs], dtype=torch.int64)
        cols = torch.tensor([r.kv_len for r in reqs], dtype=torch.int64)
        self.req_to_token_pool.req_to_token[rows, cols] = slots.to(self.req_to_token_pool.device)
        logits = self.runner.forward(batch.get_model_worker_batch())
        for r in reqs:
            r.kv_len += 1
        self._apply(self.outputs.process(reqs, logits, self.outputs.sample(reqs, logits)))
        self.new_token_ratio = max(self.cfg.min_new_token_ratio,
                                   self.new_token_ratio - self.cfg.new_token_ratio_decay)
        self.stats.on_decode(len(reqs), time.perf_counter() - t0, self)

    def _apply(self, out: StepOutput) -> None:
        """Act on a step's token processing: jumped requests re-extend next step, finished ones release
        their KV and send their result, streaming ones send their new text."""
        for r, n in out.jumped:
            self.stats.jump_forward_tokens += n
            if r in self.running:
                self.running.remove(r)
                self.pending.append(r)
        for r in out.finished:
            self.finish(r)
        for r in out.stream:
            if r.finish_reason is None:
                self.emit(r, final=False)

    # ------------------------------------------------------------ memory pressure
    def _alloc_decode_slots(self) -> Optional[torch.Tensor]:
        """One slot per running request; evicts, then retracts (SGLang's retract_decode) if short."""
        while True:
            need = len(self.running)
            if need == 0:
                return None
            if self.pool.available_size() < need:
                self.cache.evict(need - self.pool.available_size())
            if self.pool.available_size() >= need:
                return self.pool.alloc(need)
            if len(self.running) == 1 and self.pending:
                # a part-prefilled request holds KV the last running one needs: re-queue it (its KV goes
                # to the cache, evictable on the next pass) rather than abort a request that fits alone
                self.retract(self.pending[-1])
                continue
            if len(self.running) == 1:
                r = self.running[0]
                r.finish_reason = FinishReason.abort(
                    f"KV cache pool ({self.pool.size} tokens) is too small for this request "
                    f"({r.seq_len} tokens); raise scheduler.max_total_tokens")
                self.finish(r)
                continue
            self.retract(self._pick_retract())

    def _pick_retract(self) -> Req:
        """Fewest output tokens first, then longest prompt (SGLang's order)."""
        return min(self.running, key=lambda r: (len(r.output_ids), -len(r.input_ids)))

    def retract(self, r: Req) -> None:
        """Release a running or pending request's KV (into the cache, so a re-run can reuse it) and
        re-queue it at the front of the waiting queue."""
        (self.running if r in self.running else self.pending).remove(r)
        self._release_kv(r)
        r.num_retractions += 1
        self.stats.num_retractions += 1
        self.waiting.insert(0, r)
        self.new_token_ratio = self.cfg.init_new_token_ratio
        logger.info("Retract request %s (%d tokens); #running-req: %d", r.rid, r.seq_len, len(self.running))

    def _unstick(self) -> None:
        """Nothing running, yet nothing could be admitted: free cache space, re-queue all but one partially
        prefilled request, or fail a request that cannot fit the pool even alone."""
        if self.cache.evictable_size():
            self.cache.evict(self.cache.evictable_size())
            return
        if len(self.pending) > 1:
            for r in self.pending[1:]:
                self.pending.remove(r)
                self._release_kv(r)
                self.waiting.insert(0, r)
            return
        for r in self.pending + self.waiting[:1]:
            r.finish_reason = FinishReason.abort(
                f"request needs more KV than the pool has ({self.pool.size} tokens); "
                f"raise scheduler.max_total_tokens")
            self.finish(r)

    # ------------------------------------------------------------ KV ownership
    def _row_slots(self, r: Req, n: int) -> torch.Tensor:
        return self.req_to_token_pool.req_to_token[r.req_pool_idx, :n].clone()

    def _cache_unfinished(self, r: Req) -> None:
        m = self.cache.cache_unfinished_req(r.fill_ids[:r.kv_len], self._row_slots(r, r.kv_len),
                                            r.last_handle, r.prefix_len)
        self.req_to_token_pool.write(r.req_pool_idx, 0, m.kv_indices)
        r.prefix_indices, r.last_handle = m.kv_indices, m.handle

    def _release_kv(self, r: Req) -> None:
        if r.req_pool_idx is None:
            return
        self.cache.cache_finished_req(r.fill_ids[:r.kv_len], self._row_slots(r, r.kv_len),
                                      r.last_handle, r.prefix_len)
        self.req_to_token_pool.free(r.req_pool_idx)
        r.req_pool_idx, r.last_handle, r.kv_len = None, None, 0
        r.prefix_indices = torch.empty(0, dtype=torch.int64)

    # ------------------------------------------------------------ finishing
    def finish(self, r: Req) -> None:
        """Release the request's KV, take it off every queue and send the final result."""
        for q in (self.running, self.pending, self.waiting):
            if r in q:
                q.remove(r)
        self._release_kv(r)
        r.finished_time = time.perf_counter()
        self.stats.on_finish(r)
        self.emit(r, final=True)

    def emit(self, r: Req, final: bool) -> None:
        """Send the request's current result to its caller; abort it if the caller is gone."""
        r.sent_text_len = len(r.text)
        if r.sink is not None and not r.sink.put(r, final) and not final:
            r.finish_reason = FinishReason.abort("the client went away")
            self.finish(r)

    def abort(self, rid: str, message: str = "aborted by client") -> bool:
        for q in (self.running, self.pending, self.waiting):
            for r in q:
                if r.rid == rid:
                    r.finish_reason = FinishReason.abort(message)
                    self.finish(r)
                    return True
        return False

    def _recover(self, message: str) -> None:
        """After a failed step: abort the requests holding KV (running, pending, and those of the failed extend
        batch, which are on no queue while it runs; waiting ones keep their place), then, as the
        failed step may have allocated slots nobody tracks, rebuild the pools from scratch."""
        held = self.running + self.pending
        in_flight = [r for r in self._in_flight if r.finish_reason is None and r not in held]
        self._in_flight = []
        for r in held + in_flight:
            r.finish_reason = FinishReason.abort(message)
            try:
                self.finish(r)
            except Exception:  # its KV bookkeeping is inconsistent: the reset below reclaims it
                logger.error("could not release %s cleanly", r.rid)
                for q in (self.running, self.pending):
                    if r in q:
                        q.remove(r)
                self.emit(r, final=True)
        try:
            self.cache.reset()
        except Exception as e:  # still locked somewhere: leave the pools alone rather than double-own slots
            logger.error("could not reset the cache after a failed step: %s", e)
            return
        self.pool.clear()
        self.req_to_token_pool.clear()
