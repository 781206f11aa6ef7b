"""RMSNorm and its fused residual-add form."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square layer norm (Zhang & Sennrich, 2019), computed in float32
    like transformers' ``LlamaRMSNorm``.

    ``forward(x)`` returns the normalised ``x``; ``forward(x, residual)`` first
    adds ``residual`` and returns ``(normalised(x + residual), x + residual)``
    (the fused add-norm of vLLM/SGLang decoder layers).
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None):
        if residual is None:
            return rms_norm(x, self.weight, self.eps)
        residual = x + residual
        return rms_norm(residual, self.weight, self.eps), residual


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``weight * x / sqrt(mean(x**2, -1) + eps)`` over the last axis of ``x`` ``[..., d]``,
    computed in float32 and returned in ``x.dtype`` (transformers' ``LlamaRMSNorm``)."""
    if x.dtype == torch.float32:  # one fused op (same formula) instead of five
        return F.rms_norm(x, weight.shape, weight, eps)
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)
