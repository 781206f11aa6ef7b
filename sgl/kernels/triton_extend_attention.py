"""Triton extend (prefill) attention over the paged KV pool.

One program per (request, query head, block of ``BLOCK_M`` new tokens). It
walks the request's keys through ``req_to_token`` — the cached prefix and the
new tokens, whose K/V the backend has already stored — up to the last
position the block can see, with FlashAttention's online softmax (Dao et
al., 2022) and the causal rule "new token ``i`` sees positions ``<= prefix +
i``". Modelled on SGLang's ``extend_attention.py``, reading the new tokens
from the pool too so there is one loop instead of two.

Runs on GPU, or on CPU tensors with ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sgl.kernels.triton_attention_block import attend_kv_block


@triton.jit
def _extend_kernel(Q, O, K_Buf, V_Buf, Req_to_token, Req_pool_indices, Prefix_lens, Extend_lens, Qo_start,
                   sm_scale, stride_qt, stride_qh, stride_ot, stride_oh, stride_kt, stride_kh, stride_vt,
                   stride_vh, stride_r2t,
                   KV_GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_IEEE: tl.constexpr):
    b = tl.program_id(0)
    h = tl.program_id(1)
    m_block = tl.program_id(2)
    ext_len = tl.load(Extend_lens + b)
    if m_block * BLOCK_M < ext_len:
        prefix_len = tl.load(Prefix_lens + b)
        row = tl.load(Req_pool_indices + b)
        q_start = tl.load(Qo_start + b)
        kv_head = h // KV_GROUP
        offs_m = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = offs_m < ext_len
        offs_d = tl.arange(0, BLOCK_D)
        mask_d = offs_d < HEAD_DIM
        q = tl.load(Q + (q_start + offs_m)[:, None] * stride_qt + h * stride_qh + offs_d[None, :],
                    mask=mask_m[:, None] & mask_d[None, :], other=0.0)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        # last key position any row of this block may see, plus one
        kv_end = tl.minimum(prefix_len + (m_block + 1) * BLOCK_M, prefix_len + ext_len)
        for n0 in range(0, kv_end, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            mask_n = offs_n < kv_end
            slots = tl.load(Req_to_token + row * stride_r2t + offs_n, mask=mask_n, other=0).to(tl.int64)
            kv_mask = mask_n[:, None] & mask_d[None, :]
            # padding rows (offs_m >= ext_len) still see key 0, so no row is all -inf
            visible = mask_n[None, :] & (offs_n[None, :] <= prefix_len + offs_m[:, None])
            acc, l_i, m_i = attend_kv_block(q, acc, l_i, m_i, K_Buf, V_Buf, slots, kv_mask, visible, kv_head,
                                            offs_d, sm_scale, stride_kt, stride_kh, stride_vt, stride_vh,
                                            DOT_IEEE)
        tl.store(O + (q_start + offs_m)[:, None] * stride_ot + h * stride_oh + offs_d[None, :],
                 acc / l_i[:, None], mask=mask_m[:, None] & mask_d[None, :])


def extend_attention_fwd(q: torch.Tensor, k_buffer: torch.Tensor, v_buffer: torch.Tensor, out: torch.Tensor,
                         req_to_token: torch.Tensor, req_pool_indices: torch.Tensor, prefix_lens: torch.Tensor,
                         extend_lens: torch.Tensor, qo_start: torch.Tensor, max_extend: int, sm_scale: float,
                         block_m: int = 32, block_n: int = 32) -> None:
    """Paged extend attention, written into ``out``.

    Args:
        q, out: ``[n, num_heads, head_dim]``, the new tokens request after request.
        k_buffer, v_buffer: pool buffers ``[slots, num_kv_heads, head_dim]``
            (the new tokens' K/V already stored).
        req_to_token: int64 ``[rows, max_context_len]`` slot table.
        req_pool_indices, prefix_lens, extend_lens: int64 ``[bs]``.
        qo_start: int64 ``[bs]``, offset of each request's first new token in ``q``.
        max_extend: ``max(extend_lens)`` as a Python int (sizes the grid; no sync).
        sm_scale: softmax scale.
    """
    bs = req_pool_indices.shape[0]
    _, num_heads, head_dim = q.shape
    group = num_heads // k_buffer.shape[1]
    block_d = max(16, triton.next_power_of_2(head_dim))
    grid = (bs, num_heads, triton.cdiv(max_extend, block_m))
    _extend_kernel[grid](
        q, out, k_buffer, v_buffer, req_to_token, req_pool_indices, prefix_lens, extend_lens, qo_start, sm_scale,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), k_buffer.stride(0), k_buffer.stride(1),
        v_buffer.stride(0), v_buffer.stride(1), req_to_token.stride(0),
        KV_GROUP=group, HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_M=block_m, BLOCK_N=block_n,
        DOT_IEEE=q.dtype == torch.float32)
