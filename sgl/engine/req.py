"""Req: one generation request as the scheduler tracks it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, List, Optional, Tuple

import torch

from sgl.engine.sampling.sampling_params import SamplingParams

if TYPE_CHECKING:  # annotations only: these modules import Req themselves
    from sgl.engine.cache.base import CacheHandle
    from sgl.engine.detokenizer import IncrementalDetokenizer
    from sgl.engine.io import OutputSink
    from sgl.engine.stop import FinishReason, StopChecker
    from sgl.grammar.base import Grammar

# A logprob entry: (logprob or None for the first prompt token, token id, token text or None).
LogprobTriple = Tuple[Optional[float], int, Optional[str]]


@dataclass
class LogprobRequest:
    """What logprobs a request asked for.

    start_len: first prompt position whose logprob is returned (None = no prompt logprobs).
    top_logprobs_num: k of the top-k lists (0 = none). return_text: include token text in triples.
    """
    enabled: bool = False
    start_len: Optional[int] = None
    top_logprobs_num: int = 0
    return_text: bool = False


@dataclass(eq=False)
class Req:
    """A request's token state, KV bookkeeping and results.

    Token state: ``fill_ids = input_ids + output_ids``. ``kv_len`` tokens of
    fill_ids have K/V in the pool, at ``req_to_token[req_pool_idx, :kv_len]``;
    the first ``len(prefix_indices)`` of those slots belong to the prefix cache
    (matched or inserted by the request and locked through ``last_handle``).
    A running request normally has ``kv_len == len(fill_ids) - 1`` (the last
    sampled token is fed in the next decode step); a waiting, chunked or
    jump-forwarded one has ``kv_len < len(fill_ids) - 1`` and needs an extend.
    """

    rid: str
    input_ids: List[int]
    sampling_params: SamplingParams
    logprob: LogprobRequest = field(default_factory=LogprobRequest)
    stream: bool = False
    output_ids: List[int] = field(default_factory=list)

    # KV / cache bookkeeping
    req_pool_idx: Optional[int] = None
    kv_len: int = 0
    prefix_indices: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))
    last_handle: Optional["CacheHandle"] = None
    cached_tokens: int = 0  # prompt tokens served from the prefix cache (first admission)
    admitted_once: bool = False

    # per-request helpers set by the scheduler
    grammar: Optional["Grammar"] = None
    forced_tokens: List[int] = field(default_factory=list)  # queued forced tokens (jump-forward off)
    generator: Optional[torch.Generator] = None
    detokenizer: Optional["IncrementalDetokenizer"] = None
    stop_checker: Optional["StopChecker"] = None
    sink: Optional["OutputSink"] = None  # receives the results

    # results
    finish_reason: Optional["FinishReason"] = None
    input_token_logprobs: List[LogprobTriple] = field(default_factory=list)
    input_top_logprobs: List[Optional[List[LogprobTriple]]] = field(default_factory=list)
    input_logprobs_done: bool = False
    output_token_logprobs: List[LogprobTriple] = field(default_factory=list)
    output_top_logprobs: List[List[LogprobTriple]] = field(default_factory=list)
    raw_text: str = ""  # detokenized output so far
    text: str = ""  # visible output text (stop strings trimmed / held back)
    sent_text_len: int = 0
    num_retractions: int = 0

    created_time: float = field(default_factory=time.perf_counter)
    first_token_time: Optional[float] = None
    finished_time: Optional[float] = None

    @property
    def fill_ids(self) -> List[int]:
        return self.input_ids + self.output_ids

    @property
    def seq_len(self) -> int:
        return len(self.input_ids) + len(self.output_ids)

    @property
    def prefix_len(self) -> int:
        return int(self.prefix_indices.numel())

    @property
    def extend_remaining(self) -> int:
        """Tokens still to be run through the model before the next sampling (>= 1)."""
        return self.seq_len - self.kv_len
