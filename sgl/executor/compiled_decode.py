"""Single-token fast path: the dense parts of a decoder layer as two
functions compiled by ``torch.compile`` (Inductor), SGLang's
``enable_torch_compile`` for the CPU.

With one new token per step (batch-1 decode) a CPU forward is bound by reading
the weights: 538 MB per step for SmolLM2-135M in float32. oneDNN's packed GEMV
streams them at ~18 GB/s on the 2-core benchmark machine, with a fixed cost
per call that dominates the small projections. Written as a row-wise
reduction, ``(W * x).sum(-1)``, the matrix-vector product becomes an
Inductor-generated, vectorised, OpenMP-parallel loop that streams ``W`` at
~30 GB/s; the norms, rotary embedding, SiLU gate and residual adds around it
fuse into the same kernels, and each layer costs two calls instead of a dozen
ops. Measured by ``bench/model_decode.py``: 26.7 -> 36-40 tokens/s at batch 1,
and ~60 tokens/s when the weights are a GGUF's own int8 blocks (same loop,
1.25 bytes per weight; see :func:`gemv`). Over float32 weights oneDNN's GEMM
wins from two rows on; over block weights the compiled loop still wins at two
rows (85 vs 49 tokens/s at batch 2) and loses from three. The functions are
compiled for static shapes, one graph per row count.

The functions below are the eager definitions; :func:`compiled` returns the
compiled form, shared by every layer (weights are arguments, not captured
attributes), so a model needs three small graphs per row count (the
pre-attention region with and without an incoming residual, the post-attention
region) and one for the single-row LM head.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Tuple, Union

import torch

from sgl.models.gguf_blocks import dequantize_blocks
from sgl.layers.activation import silu_and_mul
from sgl.layers.norm import rms_norm
from sgl.layers.rotary import apply_rotary


def gemv(x: torch.Tensor, weight: Union[torch.Tensor, tuple], bias: Optional[torch.Tensor] = None
         ) -> torch.Tensor:
    """``x @ weight.T + bias`` for a few rows: ``x`` ``[m, k]``, ``bias`` ``[n]`` or None -> ``[m, n]``.

    ``weight`` is a ``[n, k]`` tensor, or a block-affine tuple ``(codes int8
    [n, k], scales [n, k // B], mins [n, k // B] or None)`` (see
    :mod:`sgl.models.gguf_blocks`), unpacked inside the same loop. Each row is
    a broadcast multiply and a reduction over ``k``, so that Inductor fuses the
    ``m`` rows into one streaming pass over the weight (no ``[n, k]``
    temporary); ``m`` must be static (it is unrolled)."""
    if isinstance(weight, tuple):
        weight = dequantize_blocks(*weight, dtype=x.dtype)
    if x.shape[0] == 1:
        y = (weight * x).sum(-1).unsqueeze(0)
    else:
        y = torch.stack([(weight * x[i]).sum(-1) for i in range(x.shape[0])])
    return y if bias is None else y + bias


def pre_attention(hidden: torch.Tensor, residual: Optional[torch.Tensor], norm_weight: torch.Tensor, eps: float,
                  qkv_weight, qkv_bias: Optional[torch.Tensor], cos: torch.Tensor, sin: torch.Tensor,
                  q_size: int, kv_size: int, head_dim: int
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Residual add, input RMSNorm, fused q/k/v projection and rotary embedding of ``m`` tokens.

    Weights are what :func:`gemv` takes.

    Args:
        hidden: ``[m, hidden_size]`` output of the previous layer (the embedding for layer 0).
        residual: ``[m, hidden_size]`` residual stream, or None for layer 0.
        cos, sin: ``[m, 1, head_dim]`` rotary tables at the tokens' positions.

    Returns:
        ``(q [m, q_size], k [m, kv_size], v [m, kv_size], residual [m, hidden_size])``.
    """
    residual = hidden if residual is None else hidden + residual
    qkv = gemv(rms_norm(residual, norm_weight, eps), qkv_weight, qkv_bias)
    qk = apply_rotary(qkv[:, :q_size + kv_size], cos, sin, head_dim)
    return qk[:, :q_size], qk[:, q_size:], qkv[:, q_size + kv_size:], residual


def post_attention(attn_out: torch.Tensor, residual: torch.Tensor, o_weight, o_bias: Optional[torch.Tensor],
                   norm_weight: torch.Tensor, eps: float, gate_up_weight, gate_up_bias: Optional[torch.Tensor],
                   down_weight, down_bias: Optional[torch.Tensor]
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Output projection, residual add, post-attention RMSNorm and the gated MLP of ``m`` tokens.

    Weights are what :func:`gemv` takes.

    Args:
        attn_out: ``[m, num_heads * head_dim]`` attention output.
        residual: ``[m, hidden_size]`` residual stream.

    Returns:
        ``(mlp_out [m, hidden_size], residual [m, hidden_size])``.
    """
    residual = gemv(attn_out, o_weight, o_bias) + residual
    gate_up = gemv(rms_norm(residual, norm_weight, eps), gate_up_weight, gate_up_bias)
    return gemv(silu_and_mul(gate_up), down_weight, down_bias), residual


@functools.lru_cache(maxsize=None)
def compiled(fn: Callable) -> Callable:
    """``torch.compile(fn)`` for static shapes, created once per function.

    Compilation happens at the first call of each new input signature (a C++
    compiler must be on PATH); Inductor's on-disk cache makes it ~1 s per graph
    after the first process on a machine (~17 s cold). Call
    :func:`configure_compile` on the thread that runs the model first."""
    return torch.compile(fn, dynamic=False)


def configure_compile() -> None:
    """Settings for :func:`compiled`, applied to the calling thread (dynamo's and
    Inductor's config assignments are per thread).

    Each model adds a few signatures per function (shapes, row counts, biases,
    block or float weights), so the recompile limit is raised from 8 to 64; past
    it dynamo runs the function eagerly (same results, slower), never fails.
    The graphs are small and few, so they compile in-process (a worker pool is
    no faster and leaves subprocesses behind)."""
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config

    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 64)
    inductor_config.compile_threads = 1
