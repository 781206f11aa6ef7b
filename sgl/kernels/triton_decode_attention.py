"""Triton decode attention over the paged KV pool (one query token per request).

Split-KV "flash-decoding" (Dao et al., 2023, https://crfm.stanford.edu/2023/10/12/flashdecoding.html),
laid out as in SGLang's ``decode_attention.py``: stage 1 runs one program per
(request, KV head, KV split); it handles all query heads of the GQA group at
once (one ``tl.dot`` per key block), walks its share of the sequence through
``req_to_token``, and writes a partial output plus its log-sum-exp. Stage 2
merges the splits of each (request, head). Online softmax as in
FlashAttention (Dao et al., 2022).

Runs on GPU, or on CPU tensors with ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sgl.kernels.triton_attention_block import attend_kv_block


@triton.jit
def _decode_stage1(Q, K_Buf, V_Buf, Req_to_token, Req_pool_indices, Seq_lens, Mid_O, Mid_LSE, sm_scale,
                   stride_qb, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_r2t,
                   stride_mob, stride_moh, stride_mos, stride_mlb, stride_mlh,
                   KV_GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                   BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, NUM_SPLITS: tl.constexpr,
                   DOT_IEEE: tl.constexpr):
    b = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    offs_g = tl.arange(0, BLOCK_H)
    mask_h = offs_g < KV_GROUP
    heads = kv_head * KV_GROUP + offs_g
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    seq_len = tl.load(Seq_lens + b)
    row = tl.load(Req_pool_indices + b)
    split_len = tl.cdiv(seq_len, NUM_SPLITS)
    start = split * split_len
    end = tl.minimum(start + split_len, seq_len)

    q = tl.load(Q + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                mask=mask_h[:, None] & mask_d[None, :], other=0.0)
    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    if end > start:
        for n0 in range(start, end, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            mask_n = offs_n < end
            slots = tl.load(Req_to_token + row * stride_r2t + offs_n, mask=mask_n, other=0).to(tl.int64)
            kv_mask = mask_n[:, None] & mask_d[None, :]
            acc, l_i, m_i = attend_kv_block(q, acc, l_i, m_i, K_Buf, V_Buf, slots, kv_mask, mask_n[None, :],
                                            kv_head, offs_d, sm_scale, stride_kt, stride_kh, stride_vt,
                                            stride_vh, DOT_IEEE)
        tl.store(Mid_O + b * stride_mob + heads[:, None] * stride_moh + split * stride_mos + offs_d[None, :],
                 acc / l_i[:, None], mask=mask_h[:, None] & mask_d[None, :])
        tl.store(Mid_LSE + b * stride_mlb + heads * stride_mlh + split, m_i + tl.log(l_i), mask=mask_h)


@triton.jit
def _decode_stage2(Mid_O, Mid_LSE, O, Seq_lens, stride_mob, stride_moh, stride_mos, stride_mlb, stride_mlh,
                   stride_ob, stride_oh, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                   NUM_SPLITS: tl.constexpr):
    b = tl.program_id(0)
    h = tl.program_id(1)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    seq_len = tl.load(Seq_lens + b)
    split_len = tl.cdiv(seq_len, NUM_SPLITS)
    e_max = float("-inf")
    e_sum = 0.0
    acc = tl.zeros([BLOCK_D], tl.float32)
    for s in range(0, NUM_SPLITS):
        start = s * split_len
        end = tl.minimum(start + split_len, seq_len)
        if end > start:
            part = tl.load(Mid_O + b * stride_mob + h * stride_moh + s * stride_mos + offs_d, mask=mask_d, other=0.0)
            lse = tl.load(Mid_LSE + b * stride_mlb + h * stride_mlh + s)
            new_max = tl.maximum(lse, e_max)
            old_scale = tl.exp(e_max - new_max)
            weight = tl.exp(lse - new_max)
            acc = acc * old_scale + weight * part
            e_sum = e_sum * old_scale + weight
            e_max = new_max
    tl.store(O + b * stride_ob + h * stride_oh + offs_d, acc / e_sum, mask=mask_d)


def decode_attention_fwd(q: torch.Tensor, k_buffer: torch.Tensor, v_buffer: torch.Tensor, out: torch.Tensor,
                         req_to_token: torch.Tensor, req_pool_indices: torch.Tensor, seq_lens: torch.Tensor,
                         sm_scale: float, num_kv_splits: int, block_n: int = 32) -> None:
    """Paged decode attention, written into ``out``.

    Args:
        q: ``[bs, num_heads, head_dim]`` one query per request.
        k_buffer, v_buffer: pool buffers ``[slots, num_kv_heads, head_dim]``.
        out: ``[bs, num_heads, head_dim]`` (same dtype as ``q``).
        req_to_token: int64 ``[rows, max_context_len]`` slot table.
        req_pool_indices, seq_lens: int64 ``[bs]``; request ``b`` attends to
            positions ``0 .. seq_lens[b]-1`` of row ``req_pool_indices[b]``.
        sm_scale: softmax scale (usually ``head_dim ** -0.5``).
        num_kv_splits: how many parts each sequence is split into (stage 1 grid).
    """
    bs, num_heads, head_dim = q.shape
    num_kv_heads = k_buffer.shape[1]
    group = num_heads // num_kv_heads
    block_d = max(16, triton.next_power_of_2(head_dim))
    block_h = max(16, triton.next_power_of_2(group))
    mid_o = torch.empty(bs, num_heads, num_kv_splits, head_dim, dtype=torch.float32, device=q.device)
    mid_lse = torch.empty(bs, num_heads, num_kv_splits, dtype=torch.float32, device=q.device)
    _decode_stage1[(bs, num_kv_heads, num_kv_splits)](
        q, k_buffer, v_buffer, req_to_token, req_pool_indices, seq_lens, mid_o, mid_lse, sm_scale,
        q.stride(0), q.stride(1), k_buffer.stride(0), k_buffer.stride(1), v_buffer.stride(0), v_buffer.stride(1),
        req_to_token.stride(0), mid_o.stride(0), mid_o.stride(1), mid_o.stride(2),
        mid_lse.stride(0), mid_lse.stride(1),
        KV_GROUP=group, HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_H=block_h, BLOCK_N=block_n,
        NUM_SPLITS=num_kv_splits, DOT_IEEE=q.dtype == torch.float32)
    _decode_stage2[(bs, num_heads)](
        mid_o, mid_lse, out, seq_lens, mid_o.stride(0), mid_o.stride(1), mid_o.stride(2),
        mid_lse.stride(0), mid_lse.stride(1), out.stride(0), out.stride(1),
        HEAD_DIM=head_dim, BLOCK_D=block_d, NUM_SPLITS=num_kv_splits)
