"""TorchAttentionBackend: paged attention in plain PyTorch (the CPU reference).

Both modes gather each request's keys/values from the TokenToKVPool through
``req_to_token`` into a padded ``[bs, max_len]`` slot table built once per
step in :meth:`init_forward_metadata`, then run one batched
``F.scaled_dot_product_attention`` per layer with a boolean mask (grouped-
query heads via ``enable_gqa``). There are no per-request loops in the layers
and no host syncs: all index tensors come from the ``*_cpu`` lists of the
ForwardBatch.

Decode steps that continue the previous decode batch read a dense copy of the
batch's K/V kept by :class:`DecodeKVStaging` instead of gathering it again
(bundled model, batch 32: 350 -> 395 tok/s in bench/model_decode.py); the
query heads that share a KV head go to SDPA as that head's query rows.

Cost note: extend pads every request to the batch's longest new-token count
and longest sequence, so a batch mixing one long and many short requests does
``bs * max_extend * max_seq`` work; the Triton backend has no such padding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F

from sgl.layers.attention.base import AttentionBackend
from sgl.layers.attention.decode_staging import DecodeKVStaging

if TYPE_CHECKING:  # the executor is a higher layer: type annotations only
    from sgl.executor.forward_batch import ForwardBatch

# Memory the decode K/V staging copy may take (MiB); see decode_staging.py.
DEFAULT_DECODE_STAGING_MB = 512


@dataclass(frozen=True)
class TorchAttentionMetadata:
    """Index tensors shared by all layers of one step.

    Attributes:
        kv_slots: int64 ``[bs, max_seq]`` KV-pool slots of each request's
            tokens (padding columns point at whatever the table holds; masked).
        mask: bool ``[bs, 1, q_len, max_seq]`` (True = attend) or None when
            no masking is needed (decode without padding).
        is_causal: True when a plain top-left causal mask is exact
            (single request, no prefix).
        q_batch, q_pos: int64 ``[n]`` (extend only): request and row of each
            new token in the padded ``[bs, max_extend]`` query layout.
    """

    kv_slots: torch.Tensor
    mask: Optional[torch.Tensor]
    is_causal: bool = False
    q_batch: Optional[torch.Tensor] = None
    q_pos: Optional[torch.Tensor] = None
    max_extend: int = 1


class TorchAttentionBackend(AttentionBackend):
    """Reference AttentionBackend in PyTorch (any device; float32 on CPU).

    Args:
        decode_staging_mb: memory (MiB) the decode K/V staging copy may take; 0 disables it.
            The buffer is kept for reuse once allocated (up to this size, on top of the KV pool).

    Raises:
        ValueError: ``decode_staging_mb`` is not a whole number >= 0.
    """

    def __init__(self, decode_staging_mb: int = DEFAULT_DECODE_STAGING_MB):
        if isinstance(decode_staging_mb, bool) or not isinstance(decode_staging_mb, int) or decode_staging_mb < 0:
            raise ValueError(f"decode_staging_mb must be a whole number of MiB >= 0, got {decode_staging_mb!r}")
        self.metadata: Optional[TorchAttentionMetadata] = None
        self.staging = DecodeKVStaging(decode_staging_mb * 2 ** 20)

    def init_forward_metadata(self, forward_batch: ForwardBatch) -> None:
        """Build the padded slot table and mask for this step (see module docstring).

        Sizes come from the ``*_cpu`` lists; index tensors are built on the
        batch's device, so nothing waits on the device."""
        fb = forward_batch
        self.staging.begin_step(fb)
        seq_lens = fb.seq_lens_cpu
        max_seq = max(seq_lens)
        device = fb.req_pool_indices.device
        kv_slots = fb.req_to_token_pool.req_to_token[fb.req_pool_indices, :max_seq].to(torch.int64)
        key_pos = torch.arange(max_seq, device=device)
        if fb.forward_mode.is_decode():
            mask = None
            if min(seq_lens) != max_seq:
                mask = (key_pos[None, :] < fb.seq_lens[:, None]).view(len(seq_lens), 1, 1, max_seq)
            self.metadata = TorchAttentionMetadata(kv_slots=kv_slots, mask=mask)
            return
        ext_lens = fb.extend_seq_lens_cpu
        if min(ext_lens) < 1:
            raise ValueError(f"extend_seq_lens must all be >= 1, got {list(ext_lens)}")
        bs, n, max_ext = len(ext_lens), sum(ext_lens), max(ext_lens)
        ext_t, pre_t = fb.extend_seq_lens, fb.extend_prefix_lens
        q_batch = torch.repeat_interleave(torch.arange(bs, device=device), ext_t, output_size=n)
        q_pos = torch.arange(n, device=device) - (torch.cumsum(ext_t, 0) - ext_t)[q_batch]
        is_causal = bs == 1 and fb.extend_prefix_lens_cpu[0] == 0
        mask = None
        if not is_causal:
            query_pos = torch.arange(max_ext, device=device)
            # key j visible to new token i of request b iff j <= prefix_b + i and j < seq_b
            mask = ((key_pos[None, None, :] <= pre_t[:, None, None] + query_pos[None, :, None])
                    & (key_pos[None, None, :] < fb.seq_lens[:, None, None])).unsqueeze(1)
        self.metadata = TorchAttentionMetadata(kv_slots=kv_slots, mask=mask, is_causal=is_causal,
                                               q_batch=q_batch, q_pos=q_pos, max_extend=max_ext)

    def _gather_kv(self, layer_id: int, forward_batch: ForwardBatch):
        k_buf, v_buf = forward_batch.token_to_kv_pool.get_kv_buffer(layer_id)
        slots = self.metadata.kv_slots
        flat = slots.reshape(-1)  # index_select is several times faster than advanced indexing on CPU
        shape = (*slots.shape, *k_buf.shape[1:])
        # [bs, max_seq, kvh, d] -> [bs, kvh, max_seq, d]
        return (k_buf.index_select(0, flat).view(shape).transpose(1, 2),
                v_buf.index_select(0, flat).view(shape).transpose(1, 2))

    def forward_decode(self, q, layer_id, num_heads, num_kv_heads, head_dim, scaling, forward_batch):
        """q ``[bs, num_heads, head_dim]`` -> ``[bs, num_heads, head_dim]`` over each request's whole sequence."""
        if self.staging.active:
            k, v = self.staging.keys_values(layer_id, forward_batch,
                                            lambda: self._gather_kv(layer_id, forward_batch))
        else:
            k, v = self._gather_kv(layer_id, forward_batch)
        # the query heads sharing a KV head are that head's query rows: [bs, kvh, group, d]
        # (exact GQA, and 1.4x faster than SDPA's enable_gqa on CPU)
        bs = q.shape[0]
        out = F.scaled_dot_product_attention(q.view(bs, num_kv_heads, num_heads // num_kv_heads, head_dim),
                                             k.to(q.dtype), v.to(q.dtype), attn_mask=self.metadata.mask,
                                             scale=scaling)
        return out.view(bs, num_heads, head_dim)

    def forward_extend(self, q, layer_id, num_heads, num_kv_heads, head_dim, scaling, forward_batch):
        """q ``[n, num_heads, head_dim]`` -> ``[n, num_heads, head_dim]``; new tokens see their
        request's cached prefix and the new tokens up to themselves."""
        meta = self.metadata
        k, v = self._gather_kv(layer_id, forward_batch)
        bs = k.shape[0]
        if bs == 1:
            q_pad = q.transpose(0, 1).unsqueeze(0)  # [1, h, n, d]
        else:
            q_pad = q.new_zeros(bs, meta.max_extend, num_heads, head_dim)
            q_pad[meta.q_batch, meta.q_pos] = q
            q_pad = q_pad.transpose(1, 2)
        out = F.scaled_dot_product_attention(q_pad, k.to(q.dtype), v.to(q.dtype), attn_mask=meta.mask,
                                             is_causal=meta.is_causal, scale=scaling,
                                             enable_gqa=num_heads != num_kv_heads)
        if bs == 1:
            return out.squeeze(0).transpose(0, 1)
        return out.transpose(1, 2)[meta.q_batch, meta.q_pos]
