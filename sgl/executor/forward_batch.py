"""ForwardMode and ForwardBatch: what the ModelRunner hands to the model.

A ForwardBatch is a frozen view of one model step over a batch of requests,
with all token-level tensors flattened across requests (no padding), in the
style of SGLang's ``ForwardBatch``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch

if TYPE_CHECKING:  # pragma: no cover
    from sgl.executor.memory_pool import ReqToTokenPool, TokenToKVPool


class ForwardMode(enum.Enum):
    """EXTEND: new tokens (a prompt or a chunk of one) attend to a cached
    prefix plus themselves, causally. DECODE: one new token per request."""

    EXTEND = "extend"
    DECODE = "decode"

    def is_extend(self) -> bool:
        return self is ForwardMode.EXTEND

    def is_decode(self) -> bool:
        return self is ForwardMode.DECODE


@dataclass(frozen=True)
class ForwardBatch:
    """One model step.

    Attributes (``bs`` = number of requests, ``n`` = number of new tokens in
    the step, summed over requests; for DECODE ``n == bs``):
        forward_mode: EXTEND or DECODE.
        input_ids: int64 ``[n]``, the new tokens, request after request.
        positions: int64 ``[n]``, absolute position of each new token.
        req_pool_indices: int64 ``[bs]``, row of each request in the
            ReqToTokenPool.
        seq_lens: int64 ``[bs]``, total length of each request *after* this
            step (prefix + new tokens).
        out_cache_loc: int64 ``[n]``, TokenToKVPool slots where the new
            tokens' K/V are written.
        extend_prefix_lens: int64 ``[bs]`` (EXTEND only, else None): tokens
            already in the KV pool before this step.
        extend_seq_lens: int64 ``[bs]`` (EXTEND only, else None): new tokens
            per request.
        seq_lens_cpu / extend_prefix_lens_cpu / extend_seq_lens_cpu /
            req_pool_indices_cpu: the same as Python tuples, so backends can
            loop or build metadata without a device sync
            (``req_pool_indices_cpu`` may be None: read from the tensor).
        req_to_token_pool, token_to_kv_pool: the memory pools.
    """

    forward_mode: ForwardMode
    input_ids: torch.Tensor
    positions: torch.Tensor
    req_pool_indices: torch.Tensor
    seq_lens: torch.Tensor
    out_cache_loc: torch.Tensor
    seq_lens_cpu: tuple
    req_to_token_pool: "ReqToTokenPool"
    token_to_kv_pool: "TokenToKVPool"
    extend_prefix_lens: Optional[torch.Tensor] = None
    extend_seq_lens: Optional[torch.Tensor] = None
    extend_prefix_lens_cpu: Optional[tuple] = None
    extend_seq_lens_cpu: Optional[tuple] = None
    req_pool_indices_cpu: Optional[tuple] = None

    @property
    def batch_size(self) -> int:
        return len(self.seq_lens_cpu)
