"""ModelWorkerBatch: what the scheduler hands the model runner for one step (SGLang's name).

The scheduler's view of a step (``ScheduleBatch``, in ``sgl.engine``) holds ``Req`` objects; the
runner never sees them. ``ScheduleBatch.get_model_worker_batch()`` flattens it into this frozen
record of plain tensors and tuples, which is picklable and cheap to send to other processes
(what rank 0 broadcasts under tensor parallelism). The runner turns it into a
:class:`~sgl.executor.forward_batch.ForwardBatch` (adding the pools and device tensors).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple

import torch

from sgl.executor.forward_batch import ForwardMode


@dataclass(frozen=True)
class ModelWorkerBatch:
    """One model step over ``bs`` requests and ``n`` new tokens (flattened, request after request).

    Attributes:
        forward_mode: EXTEND (prompt chunks, jump-forwarded text) or DECODE (one token per request).
        input_ids: int64 ``[n]``, the new tokens.
        positions: int64 ``[n]`` absolute positions, or ``[3, n]`` for M-RoPE (temporal, height, width).
        req_pool_indices: ``bs`` ints, each request's row of the ReqToTokenPool; the rows must
            already map positions ``[0, seq_lens[i])`` to KV slots.
        seq_lens: ``bs`` ints, tokens per request *after* this step (prefix + new).
        prefix_lens: ``bs`` ints, tokens already in the KV pool before this step.
        extend_lens: ``bs`` ints, new tokens per request (all 1 for DECODE); sums to ``n``.
        out_cache_loc: int64 ``[n]``, TokenToKVPool slots where the new tokens' K/V go.
        logits_rows: indices into the ``n`` new tokens whose logits the runner returns, in order.
        mm_inputs: per request, its multimodal inputs (None for a text-only request), or None when
            no request of the batch has any.

    Raises:
        ValueError: (at construction) when the lengths disagree.
    """

    forward_mode: ForwardMode
    input_ids: torch.Tensor
    positions: torch.Tensor
    req_pool_indices: Tuple[int, ...]
    seq_lens: Tuple[int, ...]
    prefix_lens: Tuple[int, ...]
    extend_lens: Tuple[int, ...]
    out_cache_loc: torch.Tensor
    logits_rows: Tuple[int, ...]
    mm_inputs: Optional[Tuple[Any, ...]] = None

    def __post_init__(self):
        bs, n = len(self.req_pool_indices), int(self.input_ids.numel())
        if not (len(self.seq_lens) == len(self.prefix_lens) == len(self.extend_lens) == bs):
            raise ValueError(f"req_pool_indices, seq_lens, prefix_lens and extend_lens must all have "
                             f"{bs} entries")
        if sum(self.extend_lens) != n or int(self.out_cache_loc.numel()) != n:
            raise ValueError(f"extend_lens sum to {sum(self.extend_lens)} and out_cache_loc has "
                             f"{int(self.out_cache_loc.numel())} slots, but there are {n} input_ids")
        if self.positions.shape[-1] != n or self.positions.dim() not in (1, 2):
            raise ValueError(f"positions must be [{n}] or [3, {n}], got {list(self.positions.shape)}")
        if self.mm_inputs is not None and len(self.mm_inputs) != bs:
            raise ValueError(f"mm_inputs must have one entry per request ({bs})")

    @property
    def batch_size(self) -> int:
        return len(self.req_pool_indices)
