"""Scheduler counters and SGLang-style step log lines."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field

logger = logging.getLogger("sgl")


@dataclass
class SchedulerStats:
    """Cumulative counters (tokens unless named otherwise; step_time: seconds spent in extend/decode steps,
    model forward plus sampling and output processing)."""
    num_requests: int = 0
    num_finished: int = 0
    num_aborted: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    generation_tokens: int = 0
    prefill_steps: int = 0
    decode_steps: int = 0
    step_time: float = 0.0
    num_retractions: int = 0
    jump_forward_tokens: int = 0
    last_decode_log: float = field(default_factory=time.perf_counter)
    decode_tokens_since_log: int = 0

    @property
    def cache_hit_rate(self) -> float:
        """cached prompt tokens / prompt tokens over all admitted requests."""
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def on_prefill(self, batch, sched) -> None:
        """Count an extend batch (call before it runs: ``Req.kv_len`` is each request's reused KV) and
        log SGLang's ``Prefill batch.`` line; ``#cached-token`` is the KV the batch reuses, whether
        matched in the prefix cache, computed by earlier chunks or kept across a jump-forward."""
        self.prefill_steps += 1
        new_tokens = sum(batch.extend_lens)
        cached = sum(batch.prefix_lens)
        for r in batch.new_reqs:
            if r.num_retractions == 0:
                self.num_requests += 1
                self.prompt_tokens += len(r.input_ids)
                self.cached_tokens += r.cached_tokens
        hit = cached / max(cached + new_tokens, 1)
        logger.info(
            "Prefill batch. #new-seq: %d, #new-token: %d, #cached-token: %d, cache hit rate: %.2f%%, "
            "token usage: %.2f, #running-req: %d, #queue-req: %d",
            len(batch.reqs), new_tokens, cached, 100 * hit, token_usage(sched),
            len(sched.running), len(sched.waiting))

    def on_decode(self, bs: int, seconds: float, sched) -> None:
        self.decode_steps += 1
        self.step_time += seconds
        self.decode_tokens_since_log += bs
        interval = sched.cfg.log_interval
        if interval and self.decode_steps % interval == 0:
            now = time.perf_counter()
            tput = self.decode_tokens_since_log / max(now - self.last_decode_log, 1e-9)
            self.last_decode_log, self.decode_tokens_since_log = now, 0
            logger.info("Decode batch. #running-req: %d, #token: %d, token usage: %.2f, "
                        "gen throughput (token/s): %.2f, #queue-req: %d",
                        bs, sched.pool.size - sched.pool.available_size(), token_usage(sched), tput,
                        len(sched.waiting))

    def on_finish(self, r) -> None:
        self.num_finished += 1
        self.generation_tokens += len(r.output_ids)
        if r.finish_reason is not None and r.finish_reason.type == "abort":
            self.num_aborted += 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("last_decode_log")
        d.pop("decode_tokens_since_log")
        d["cache_hit_rate"] = self.cache_hit_rate
        return d


def token_usage(sched) -> float:
    """Fraction of KV pool slots in use by requests or the cache."""
    return 1.0 - sched.pool.available_size() / sched.pool.size
