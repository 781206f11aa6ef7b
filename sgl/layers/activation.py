"""Activations of gated MLPs."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """``[n, 2 * d]`` -> ``[n, d]``: ``silu(x[:, :d]) * x[:, d:]`` (SwiGLU, Shazeer 2020)."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up
