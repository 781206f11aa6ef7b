"""TritonAttentionBackend: paged attention with Triton kernels.

Decode uses split-KV flash-decoding (:mod:`sgl.kernels.triton_decode_attention`),
extend a FlashAttention-style kernel over prefix + new tokens
(:mod:`sgl.kernels.triton_extend_attention`). Both read K/V straight from the
TokenToKVPool through ``req_to_token``; nothing is padded or gathered.

Needs a CUDA GPU, or ``TRITON_INTERPRET=1`` set before this module is first
imported (then the kernels run on CPU tensors through Triton's interpreter,
slowly; that is how the tests check them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch
import triton

from sgl.layers.attention.base import AttentionBackend
from sgl.kernels.triton_decode_attention import decode_attention_fwd
from sgl.kernels.triton_extend_attention import extend_attention_fwd

if TYPE_CHECKING:  # the executor is a higher layer: type annotations only
    from sgl.executor.forward_batch import ForwardBatch


def kernels_interpreted() -> bool:
    """True when our kernels (and triton.language's own jit helpers) were built by
    Triton's interpreter, i.e. TRITON_INTERPRET=1 was set before triton was imported."""
    from triton.language import zeros
    from triton.runtime.interpreter import InterpretedFunction

    from sgl.kernels.triton_extend_attention import _extend_kernel
    return isinstance(_extend_kernel, InterpretedFunction) and isinstance(zeros, InterpretedFunction)


@dataclass(frozen=True)
class TritonAttentionMetadata:
    """Per-step values shared by all layers.

    Attributes:
        num_kv_splits: decode: parts each sequence is split into.
        qo_start: extend: int64 ``[bs]`` offset of each request's first new token.
        max_extend: extend: longest new-token run (Python int, sizes the grid).
    """

    num_kv_splits: int = 1
    qo_start: Optional[torch.Tensor] = None
    max_extend: int = 0


class TritonAttentionBackend(AttentionBackend):
    """AttentionBackend running Triton kernels.

    Args:
        max_kv_splits: upper bound on decode KV splits (more splits = more
            parallelism for long sequences at small batch).
        split_tokens: aim for about this many keys per split.
        block_m, block_n: extend query/key tile sizes.

    Raises:
        ValueError: no CUDA device and TRITON_INTERPRET is not "1".
    """

    def __init__(self, max_kv_splits: int = 8, split_tokens: int = 256, block_m: int = 32, block_n: int = 32):
        if not torch.cuda.is_available() and not kernels_interpreted():
            raise ValueError("the triton attention backend needs a CUDA GPU, or TRITON_INTERPRET=1 set "
                             "before triton is first imported to run on CPU (TRITON_INTERPRET="
                             f"{os.environ.get('TRITON_INTERPRET')!r})")
        if max_kv_splits < 1 or split_tokens < 1:
            raise ValueError(f"max_kv_splits and split_tokens must be >= 1, got {max_kv_splits}, {split_tokens}")
        self.max_kv_splits = max_kv_splits
        self.split_tokens = split_tokens
        self.block_m = block_m
        self.block_n = block_n
        self.metadata = TritonAttentionMetadata()

    def init_forward_metadata(self, forward_batch: ForwardBatch) -> None:
        """Pick the decode split count, or the extend query offsets, for this step."""
        fb = forward_batch
        if fb.forward_mode.is_decode():
            splits = min(self.max_kv_splits, triton.cdiv(max(fb.seq_lens_cpu), self.split_tokens))
            # a power of two keeps the number of compiled variants small
            self.metadata = TritonAttentionMetadata(num_kv_splits=triton.next_power_of_2(splits))
            return
        ext = fb.extend_seq_lens_cpu
        if min(ext) < 1:
            raise ValueError(f"extend_seq_lens must all be >= 1, got {list(ext)}")
        qo_start = torch.cumsum(fb.extend_seq_lens, 0) - fb.extend_seq_lens
        self.metadata = TritonAttentionMetadata(qo_start=qo_start, max_extend=max(ext))

    def forward_decode(self, q, layer_id, num_heads, num_kv_heads, head_dim, scaling, forward_batch):
        """q ``[bs, num_heads, head_dim]`` -> ``[bs, num_heads, head_dim]``."""
        fb = forward_batch
        k_buf, v_buf = fb.token_to_kv_pool.get_kv_buffer(layer_id)
        out = torch.empty_like(q)
        decode_attention_fwd(q, k_buf, v_buf, out, fb.req_to_token_pool.req_to_token, fb.req_pool_indices,
                             fb.seq_lens, scaling, self.metadata.num_kv_splits, self.block_n)
        return out

    def forward_extend(self, q, layer_id, num_heads, num_kv_heads, head_dim, scaling, forward_batch):
        """q ``[n, num_heads, head_dim]`` -> ``[n, num_heads, head_dim]``."""
        fb = forward_batch
        k_buf, v_buf = fb.token_to_kv_pool.get_kv_buffer(layer_id)
        out = torch.empty_like(q)
        extend_attention_fwd(q, k_buf, v_buf, out, fb.req_to_token_pool.req_to_token, fb.req_pool_indices,
                             fb.extend_prefix_lens, fb.extend_seq_lens, self.metadata.qo_start,
                             self.metadata.max_extend, scaling, self.block_m, self.block_n)
        return out
