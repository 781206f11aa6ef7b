"""ScheduleBatch: the scheduler's view of one step, and its flattening into a ModelWorkerBatch.

SGLang's names: a ``ScheduleBatch`` holds the ``Req`` objects of a step (which requests extend by
how many tokens, or decode, and where their new K/V go); ``get_model_worker_batch`` turns it into
the plain-tensor :class:`~sgl.executor.model_worker_batch.ModelWorkerBatch` the runner takes, and
records which logits rows belong to which request (sampling, prompt logprobs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Tuple

import torch

from sgl.engine.req import Req
from sgl.executor.forward_batch import ForwardMode
from sgl.executor.model_worker_batch import ModelWorkerBatch


@dataclass(frozen=True)
class LogprobSpan:
    """Prompt logprobs computed by a step: the ``count`` logits rows from ``first_row`` are the model's
    outputs at prompt positions ``first_pos, first_pos + 1, ...`` of ``req``."""
    req: Req
    first_row: int
    count: int
    first_pos: int


@dataclass
class ScheduleBatch:
    """The requests of one step; read before the step runs (``Req.kv_len`` is the prefix length).

    Attributes:
        forward_mode: EXTEND or DECODE.
        reqs: the requests, in batch order.
        extend_lens: new tokens per request (1 per request for DECODE).
        slots: the new tokens' KV slots in pieces (int64; for EXTEND one piece per request).
        new_reqs: the requests admitted from the waiting queue in this step (EXTEND).
        sample_rows: after :meth:`get_model_worker_batch`: ``(req, row)`` for each request whose
            next token is sampled from row ``row`` of the returned logits.
        logprob_spans: after :meth:`get_model_worker_batch`: prompt logprob rows (:class:`LogprobSpan`).
    """

    forward_mode: ForwardMode
    reqs: List[Req] = field(default_factory=list)
    extend_lens: List[int] = field(default_factory=list)
    slots: List[torch.Tensor] = field(default_factory=list)
    new_reqs: List[Req] = field(default_factory=list)
    sample_rows: List[Tuple[Req, int]] = field(default_factory=list)
    logprob_spans: List[LogprobSpan] = field(default_factory=list)

    @classmethod
    def decode(cls, reqs: List[Req], out_cache_loc: torch.Tensor) -> "ScheduleBatch":
        """One token per request (its last output token, at position ``kv_len``) into ``out_cache_loc``
        (int64 ``[len(reqs)]``)."""
        return cls(ForwardMode.DECODE, list(reqs), [1] * len(reqs), [out_cache_loc])

    def add(self, r: Req, extend_len: int, slots: torch.Tensor) -> None:
        """Extend ``r`` by ``extend_len`` tokens of its fill_ids from ``r.kv_len``, K/V into ``slots``."""
        self.reqs.append(r)
        self.extend_lens.append(extend_len)
        self.slots.append(slots)

    @property
    def out_cache_loc(self) -> torch.Tensor:
        """int64 ``[sum(extend_lens)]``, the new tokens' KV slots."""
        if len(self.slots) == 1:
            return self.slots[0]
        return torch.cat(self.slots) if self.slots else torch.empty(0, dtype=torch.int64)

    @property
    def prefix_lens(self) -> Tuple[int, ...]:
        """Tokens each request has in the KV pool before the step (reused KV)."""
        return tuple(r.kv_len for r in self.reqs)

    def get_model_worker_batch(self) -> ModelWorkerBatch:
        """The step as plain tensors and tuples; fills :attr:`sample_rows` and :attr:`logprob_spans`.

        EXTEND returns logits for the last new token of each request that has all its tokens in KV
        after the step (it samples next) and for the prompt positions whose logprobs were asked for;
        DECODE for every request."""
        prefix = self.prefix_lens
        if self.forward_mode.is_decode():
            self.sample_rows = [(r, i) for i, r in enumerate(self.reqs)]
            self.logprob_spans = []
            input_ids = [r.output_ids[-1] for r in self.reqs]
            positions, rows = list(prefix), tuple(range(len(self.reqs)))
        else:
            input_ids, positions, rows = [], [], []
            self.sample_rows, self.logprob_spans = [], []
            offset = 0
            for r, ext, start in zip(self.reqs, self.extend_lens, prefix):
                input_ids.extend(r.fill_ids[start:start + ext])
                positions.extend(range(start, start + ext))
                if r.logprob.start_len is not None and not r.input_logprobs_done:
                    lo = max(max(r.logprob.start_len - 1, 0), start)
                    hi = min(len(r.input_ids) - 1, start + ext)
                    if hi > lo:
                        self.logprob_spans.append(LogprobSpan(r, len(rows), hi - lo, lo))
                        rows.extend(range(offset + lo - start, offset + hi - start))
                if start + ext == r.seq_len:
                    self.sample_rows.append((r, len(rows)))
                    rows.append(offset + ext - 1)
                offset += ext
            rows = tuple(rows)
        return ModelWorkerBatch(
            forward_mode=self.forward_mode,
            input_ids=torch.tensor(input_ids, dtype=torch.int64),
            positions=torch.tensor(positions, dtype=torch.int64),
            req_pool_indices=tuple(r.req_pool_idx for r in self.reqs),
            seq_lens=tuple(p + e for p, e in zip(prefix, self.extend_lens)),
            prefix_lens=prefix, extend_lens=tuple(self.extend_lens),
            out_cache_loc=self.out_cache_loc, logits_rows=rows)
