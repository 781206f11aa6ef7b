"""The inner step shared by the Triton decode and extend kernels: one block of
``BLOCK_N`` keys of a request, read from the paged KV pool through its slots,
folded into a FlashAttention online-softmax state (Dao et al., 2022)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def attend_kv_block(q, acc, l_i, m_i, K_Buf, V_Buf, slots, kv_mask, visible, kv_head, offs_d, sm_scale,
                    stride_kt, stride_kh, stride_vt, stride_vh, DOT_IEEE: tl.constexpr):
    """Fold keys/values at pool ``slots`` (int64 ``[BLOCK_N]``) into the running state.

    ``q`` ``[R, BLOCK_D]`` (R query rows), ``acc`` float32 ``[R, BLOCK_D]``, ``l_i``/``m_i``
    float32 ``[R]`` (softmax denominator and running max), ``kv_mask`` ``[BLOCK_N, BLOCK_D]``
    (which K/V elements exist), ``visible`` ``[R, BLOCK_N]`` (which keys each row may attend).
    Returns the updated ``(acc, l_i, m_i)``."""
    k = tl.load(K_Buf + slots[:, None] * stride_kt + kv_head * stride_kh + offs_d[None, :],
                mask=kv_mask, other=0.0).to(q.dtype)
    if DOT_IEEE:
        qk = tl.dot(q, tl.trans(k), input_precision="ieee")
    else:
        qk = tl.dot(q, tl.trans(k))
    qk = tl.where(visible, qk * sm_scale, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    alpha = tl.exp(m_i - m_new)
    p = tl.exp(qk - m_new[:, None])
    v = tl.load(V_Buf + slots[:, None] * stride_vt + kv_head * stride_vh + offs_d[None, :],
                mask=kv_mask, other=0.0).to(q.dtype)
    if DOT_IEEE:
        pv = tl.dot(p.to(v.dtype), v, input_precision="ieee")
    else:
        pv = tl.dot(p.to(v.dtype), v)
    return acc * alpha[:, None] + pv, l_i * alpha + tl.sum(p, 1), m_new
