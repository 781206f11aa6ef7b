"""Rotary position embedding (RoPE): config parsing, inverse frequencies, the cos/sin cache and the rotation."""

from __future__ import annotations

import math

import torch
from torch import nn


def rope_parameters(hf_config) -> dict:
    """RoPE settings of a config as one dict with at least ``rope_type`` and
    ``rope_theta``; reads transformers v5 ``rope_parameters`` or the v4
    ``rope_theta`` + ``rope_scaling`` pair."""
    params = getattr(hf_config, "rope_parameters", None)
    if params and "rope_theta" in params:
        out = dict(params)
    else:
        out = dict(getattr(hf_config, "rope_scaling", None) or {})
        out["rope_theta"] = getattr(hf_config, "rope_theta", None) or 10000.0
    out["rope_type"] = out.get("rope_type", out.get("type", "default")) or "default"
    return out


def compute_inv_freq(head_dim: int, params: dict, max_position_embeddings: int) -> torch.Tensor:
    """Inverse frequencies ``[head_dim // 2]`` float32 for RoPE (Su et al., 2021).

    Supported ``rope_type``: ``default``; ``linear`` (position interpolation,
    Chen et al. 2023: frequencies divided by ``factor``); ``llama3`` (Llama 3.1
    wavelength-dependent scaling). Formulas follow transformers'
    ``modeling_rope_utils`` so results match bit for bit.

    Raises:
        ValueError: for any other ``rope_type`` (e.g. dynamic, yarn).
    """
    base = float(params["rope_theta"])
    rope_type = params["rope_type"]
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if rope_type == "default":
        return inv_freq
    if rope_type == "linear":
        return inv_freq / float(params["factor"])
    if rope_type == "llama3":
        factor = float(params["factor"])
        low_ff = float(params["low_freq_factor"])
        high_ff = float(params["high_freq_factor"])
        old_len = params.get("original_max_position_embeddings", max_position_embeddings)
        low_freq_wavelen = old_len / low_ff
        high_freq_wavelen = old_len / high_ff
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low_ff) / (high_ff - low_ff)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
        return torch.where(is_medium, smoothed, scaled)
    raise ValueError(f"unsupported rope_scaling rope_type {rope_type!r}; supported: default, linear, llama3")


class RotaryEmbedding(nn.Module):
    """Rotary position embedding, "rotate half" (GPT-NeoX / HF Llama) layout.

    A cos/sin cache ``[max_position, head_dim]`` (float32) is precomputed once
    and indexed by the token positions at run time.

    Args:
        head_dim: per-head size (even).
        max_position: cache length (the model's context length).
        params: output of :func:`rope_parameters`.
    """

    def __init__(self, head_dim: int, max_position: int, params: dict):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary head_dim must be even, got {head_dim}")
        self.head_dim = head_dim
        inv_freq = compute_inv_freq(head_dim, params, max_position)
        freqs = torch.arange(max_position, dtype=torch.float32)[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos_cache", emb.cos(), persistent=False)
        self.register_buffer("sin_cache", emb.sin(), persistent=False)

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype):
        """cos, sin ``[n, 1, head_dim]`` in ``dtype`` for int64 ``positions`` ``[n]``
        (computed once per step and shared by all layers)."""
        return (self.cos_cache[positions].to(dtype).unsqueeze(1),
                self.sin_cache[positions].to(dtype).unsqueeze(1))

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        """Rotate ``q`` ``[n, num_heads * head_dim]`` and ``k`` ``[n, num_kv_heads * head_dim]``
        by int64 ``positions`` ``[n]``; returns new tensors of the same shapes."""
        cos, sin = self.cos_sin(positions, q.dtype)
        return apply_rotary(q, cos, sin, self.head_dim), apply_rotary(k, cos, sin, self.head_dim)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, head_dim: int) -> torch.Tensor:
    """``x`` ``[n, heads * head_dim]`` rotated by ``cos``/``sin`` ``[n, 1, head_dim]``
    (rotate-half form: ``x * cos + rotate_half(x) * sin``); same shape out."""
    n = x.shape[0]
    x = x.view(n, -1, head_dim)
    x1, x2 = x.chunk(2, dim=-1)
    return (x * cos + torch.cat((-x2, x1), dim=-1) * sin).view(n, -1)
