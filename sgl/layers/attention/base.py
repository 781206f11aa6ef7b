"""AttentionBackend: the interface the model's attention layers call.

Contract (SGLang's design): for every layer, the backend first writes the new
tokens' K/V into the TokenToKVPool at ``forward_batch.out_cache_loc``, then
computes attention of the new queries over each request's whole sequence
(the cached prefix read through ``req_to_token`` plus the new tokens),
causally. The result is identical for EXTEND and DECODE up to float error.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # the executor is a higher layer: type annotations only
    from sgl.executor.forward_batch import ForwardBatch


class AttentionBackend(ABC):
    """Computes paged attention over the KV pool.

    Shapes: ``q`` is ``[n, num_heads * head_dim]``, ``k``/``v`` are
    ``[n, num_kv_heads * head_dim]`` for the ``n`` new tokens of the batch
    (float32 on CPU); the output is ``[n, num_heads * head_dim]``. Grouped-
    query attention: query head ``h`` reads KV head ``h // (num_heads //
    num_kv_heads)``.
    """

    def init_forward_metadata(self, forward_batch: ForwardBatch) -> None:
        """Called once per step before the layers run (build index tensors here)."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int,
                num_heads: int, num_kv_heads: int, head_dim: int, scaling: float,
                forward_batch: ForwardBatch) -> torch.Tensor:
        """Store k/v for the new tokens, then attend. Dispatches on forward_mode."""
        forward_batch.token_to_kv_pool.set_kv(
            layer_id, forward_batch.out_cache_loc,
            k.view(-1, num_kv_heads, head_dim), v.view(-1, num_kv_heads, head_dim))
        fn = self.forward_decode if forward_batch.forward_mode.is_decode() else self.forward_extend
        return fn(q.view(-1, num_heads, head_dim), layer_id, num_heads, num_kv_heads, head_dim,
                  scaling, forward_batch).reshape(q.shape[0], num_heads * head_dim)

    @abstractmethod
    def forward_extend(self, q: torch.Tensor, layer_id: int, num_heads: int, num_kv_heads: int,
                       head_dim: int, scaling: float, forward_batch: ForwardBatch) -> torch.Tensor:
        """q ``[n, num_heads, head_dim]`` -> out ``[n, num_heads, head_dim]``; K/V already stored."""

    @abstractmethod
    def forward_decode(self, q: torch.Tensor, layer_id: int, num_heads: int, num_kv_heads: int,
                       head_dim: int, scaling: float, forward_batch: ForwardBatch) -> torch.Tensor:
        """q ``[bs, num_heads, head_dim]`` -> out ``[bs, num_heads, head_dim]``; K/V already stored."""
