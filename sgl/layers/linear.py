"""Linear layers with per-parameter weight loaders (nano-vllm / SGLang style): a plain
``Linear``, the fused q/k/v projection, stacked projections (gate/up of a gated MLP),
oneDNN-prepacked CPU weights with post-op epilogues, and GGUF block-weight copies.

Parameters are allocated with ``torch.empty`` (no random init): every weight is
overwritten by the model's ``load_weights``, so initialisation would only cost time.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sgl.layers.activation import silu_and_mul


class Linear(nn.Module):
    """``y = x @ W.T + b`` with an uninitialised ``W`` of shape ``[out_features, in_features]``.

    ``weight_loader(param, loaded, shard_id=None)`` copies a checkpoint tensor
    into the parameter; fused subclasses override it to place a shard.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.packed_weight: Optional[torch.Tensor] = None  # see prepack_cpu
        self.block_weight: Optional[tuple] = None  # see set_block_weight
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.weight.weight_loader = self.weight_loader
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False)
            self.bias.weight_loader = self.weight_loader
        else:
            self.register_parameter("bias", None)

    def shard_offsets(self) -> dict:
        """Maps shard id -> (start row, rows) for fused layers; empty for a plain layer."""
        return {}

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: Optional[str] = None) -> None:
        """Copy ``loaded`` into ``param`` (or into rows of shard ``shard_id``).

        Raises:
            ValueError: on an unknown shard id or a shape mismatch.
        """
        target = param.data
        if shard_id is not None:
            offsets = self.shard_offsets()
            if shard_id not in offsets:
                raise ValueError(f"{type(self).__name__} has no shard {shard_id!r}; known: {sorted(offsets)}")
            start, rows = offsets[shard_id]
            target = target.narrow(0, start, rows)
        if tuple(target.shape) != tuple(loaded.shape):
            raise ValueError(f"{type(self).__name__}: weight shape {tuple(loaded.shape)} does not fit "
                             f"parameter slice {tuple(target.shape)} (shard {shard_id!r})")
        target.copy_(loaded)

    def prepack_cpu(self, batch_hint: int = 8) -> bool:
        """Keep a oneDNN-packed copy of the weight and use it in ``forward``.

        On x86 CPUs (notably AMD, where MKL's fp32 GEMV is slow) the packed
        matmul is ~15% faster at batch 1 and ~40% at batch 8 (measured in
        bench/model_decode.py). Costs one extra copy of the weight in memory.
        Returns False (and changes nothing) off CPU, without oneDNN, or for
        dtypes other than float32/bfloat16. The model's ``load_weights``
        drops packed copies (they would be stale).
        """
        if not can_prepack(self.weight):
            return False
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), batch_hint)
        return True

    def drop_derived_weights(self) -> None:
        """Forget packed and block copies (call when the float weight changes: they would be stale)."""
        self.packed_weight = self.block_weight = None

    def set_block_weight(self, shards: dict) -> bool:
        """Keep the block-affine form of the weight (:class:`~sgl.models.gguf_blocks.BlockWeight`
        per shard id, or under None for a plain layer) for :func:`~sgl.executor.compiled_decode.gemv`.

        Returns False (and keeps none) unless every shard is present, all
        share one block size and together they have the weight's shape."""
        order = list(self.shard_offsets()) or [None]
        if set(shards) != set(order):
            return False
        parts = [shards[k] for k in order]
        if len({p.codes.shape[1] // p.scales.shape[1] for p in parts}) != 1:
            return False
        codes = torch.cat([p.codes for p in parts])
        if tuple(codes.shape) != tuple(self.weight.shape):
            return False
        mins = None
        if any(p.mins is not None for p in parts):
            mins = torch.cat([p.mins if p.mins is not None else torch.zeros_like(p.scales) for p in parts])
        device = self.weight.device
        self.block_weight = (codes.to(device), torch.cat([p.scales for p in parts]).to(device),
                             None if mins is None else mins.to(device))
        return True

    @property
    def gemv_weight(self):
        """What single-token matmuls read: ``block_weight`` if set, else ``weight``."""
        return self.block_weight if self.block_weight is not None else self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[n, in_features]`` -> ``[n, out_features]``."""
        if self.packed_weight is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)

    def forward_add(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """``x @ W.T + b + other`` with ``other`` ``[n, out_features]`` (a residual).

        With a packed weight the add is a post-op of the oneDNN GEMM, applied to
        each output tile while it is in cache: the same float32 result as a
        separate add, bit for bit, without a pass over the output."""
        if self.packed_weight is not None:
            return torch.ops.mkldnn._linear_pointwise.binary(x, other, self.packed_weight, self.bias, "add")
        return F.linear(x, self.weight, self.bias) + other

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def can_prepack(weight: torch.Tensor) -> bool:
    """True when oneDNN can pack ``weight`` (a float32 or bfloat16 CPU tensor, oneDNN built in)."""
    return (weight.device.type == "cpu" and torch.backends.mkldnn.is_available()
            and weight.dtype in (torch.float32, torch.bfloat16))


def prepack_linears_cpu(model: nn.Module, batch_hint: int = 8) -> int:
    """Call :meth:`Linear.prepack_cpu` on every Linear of ``model``; returns how many were packed."""
    return sum(m.prepack_cpu(batch_hint) for m in model.modules() if isinstance(m, Linear))


class QKVLinear(Linear):
    """Fused q/k/v projection: output ``[n, (num_heads + 2 * num_kv_heads) * head_dim]``,
    rows ordered q, k, v (shard ids ``"q"``, ``"k"``, ``"v"``)."""

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool = False):
        self.q_size = num_heads * head_dim
        self.kv_size = num_kv_heads * head_dim
        super().__init__(hidden_size, self.q_size + 2 * self.kv_size, bias=bias)

    def shard_offsets(self) -> dict:
        return {"q": (0, self.q_size), "k": (self.q_size, self.kv_size),
                "v": (self.q_size + self.kv_size, self.kv_size)}


class MergedLinear(Linear):
    """Several projections of the same input stacked on the output axis
    (e.g. gate and up of a gated MLP); shard ``i`` is the ``i``-th block."""

    def __init__(self, in_features: int, output_sizes: Sequence[int], bias: bool = False):
        self.output_sizes = list(output_sizes)
        super().__init__(in_features, sum(self.output_sizes), bias=bias)

    def shard_offsets(self) -> dict:
        starts = [sum(self.output_sizes[:i]) for i in range(len(self.output_sizes))]
        return {i: (s, n) for i, (s, n) in enumerate(zip(starts, self.output_sizes))}


class GateUpLinear(MergedLinear):
    """The gate and up projections of a gated MLP, stacked (shards 0 and 1, ``intermediate_size`` rows each).

    ``forward_silu_mul(x)`` gives ``silu(gate(x)) * up(x)`` ``[n, intermediate_size]``.
    On CPU, :meth:`prepack_cpu` packs gate and up as two oneDNN weights instead
    of one, so that SiLU runs as the gate GEMM's post-op (oneDNN's swish,
    within ~1 ulp of ``F.silu``) and the product as the up GEMM's (exact): no
    ``[n, 2 * intermediate_size]`` intermediate and no elementwise passes
    (bundled model at batch 32: ~3% of the decode step).
    """

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool = False):
        super().__init__(hidden_size, [intermediate_size, intermediate_size], bias=bias)
        self.intermediate_size = intermediate_size
        self.packed_gate_up: Optional[tuple] = None  # (gate, up) packed weights

    def prepack_cpu(self, batch_hint: int = 8) -> bool:
        if not can_prepack(self.weight):
            return False
        gate, up = self.weight.detach().split(self.intermediate_size)
        self.packed_gate_up = tuple(torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), batch_hint)
                                    for w in (gate, up))
        return True

    def drop_derived_weights(self) -> None:
        super().drop_derived_weights()
        self.packed_gate_up = None

    def _biases(self):
        return (None, None) if self.bias is None else self.bias.split(self.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[n, in_features]`` -> gate and up outputs side by side, ``[n, 2 * intermediate_size]``."""
        if self.packed_gate_up is None:
            return super().forward(x)
        return torch.cat([torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
                          for w, b in zip(self.packed_gate_up, self._biases())], dim=-1)

    def forward_silu_mul(self, x: torch.Tensor) -> torch.Tensor:
        """``silu(x @ Wg.T + bg) * (x @ Wu.T + bu)``: ``[n, in_features]`` -> ``[n, intermediate_size]``."""
        if self.packed_gate_up is None:
            return silu_and_mul(super().forward(x))
        (w_gate, w_up), (b_gate, b_up) = self.packed_gate_up, self._biases()
        gate = torch.ops.mkldnn._linear_pointwise(x, w_gate, b_gate, "swish", [], "")
        return torch.ops.mkldnn._linear_pointwise.binary(x, gate, w_up, b_up, "mul")
