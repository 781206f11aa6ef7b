"""KV memory: ReqToTokenPool and TokenToKVPool (SGLang's two-level design).

TokenToKVPool holds K and V for every cached token of every layer in
preallocated tensors; a token's "slot" (an int64 index) is the same in all
layers. ReqToTokenPool maps (request row, position) -> slot, so a request's
KV can be scattered anywhere in the pool (token-granular paging, page size 1).
Slot 0 is reserved as a padding slot and never handed out.
"""

from __future__ import annotations

from typing import List, Optional

import torch


class ReqToTokenPool:
    """Table ``req_to_token`` of shape ``[size, max_context_len]`` (int32 slots).

    Args:
        size: maximum number of concurrently running requests (rows).
        max_context_len: maximum tokens per request (columns).
        device: torch device.
    """

    def __init__(self, size: int, max_context_len: int, device: str | torch.device = "cpu"):
        if size <= 0 or max_context_len <= 0:
            raise ValueError(f"ReqToTokenPool needs size>0 and max_context_len>0, got {size}, {max_context_len}")
        self.size = size
        self.max_context_len = max_context_len
        self.device = torch.device(device)
        self.req_to_token = torch.zeros((size, max_context_len), dtype=torch.int64, device=self.device)
        self.free_slots: List[int] = list(range(size))

    def available_size(self) -> int:
        return len(self.free_slots)

    def alloc(self) -> Optional[int]:
        """Return a free row index, or None when all rows are in use."""
        if not self.free_slots:
            return None
        return self.free_slots.pop()

    def free(self, index: int) -> None:
        self.free_slots.append(index)

    def write(self, row: int, start: int, slots: torch.Tensor) -> None:
        """Record ``slots`` (int64 ``[k]``) as the KV slots of positions ``start..start+k-1`` of ``row``."""
        self.req_to_token[row, start : start + slots.numel()] = slots

    def clear(self) -> None:
        self.free_slots = list(range(self.size))


class TokenToKVPool:
    """Per-layer K/V buffers ``[size + 1, num_kv_heads, head_dim]`` plus a free list.

    Args:
        size: number of token slots (the KV budget in tokens). Slot 0 is an
            extra padding slot, so the buffers hold ``size + 1`` rows.
        num_layers, num_kv_heads, head_dim: model shape.
        dtype: KV dtype (float32 on CPU).
        device: torch device.

    Memory: ``2 * num_layers * (size + 1) * num_kv_heads * head_dim * itemsize`` bytes.
    """

    def __init__(self, size: int, num_layers: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        if size <= 0:
            raise ValueError(f"TokenToKVPool size must be > 0 tokens, got {size}")
        self.size = size
        self.num_layers = num_layers
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.dtype = dtype
        self.device = torch.device(device)
        shape = (size + 1, num_kv_heads, head_dim)
        self.k_buffer = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(num_layers)]
        self.v_buffer = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(num_layers)]
        self.clear()

    def clear(self) -> None:
        # Free slots kept as a CPU int64 tensor; alloc takes from the front.
        self.free_slots = torch.arange(1, self.size + 1, dtype=torch.int64)

    def available_size(self) -> int:
        """Number of free token slots."""
        return int(self.free_slots.numel())

    def alloc(self, need_size: int) -> Optional[torch.Tensor]:
        """Return int64 ``[need_size]`` free slots (on the pool's device), or None if not enough."""
        if need_size > self.free_slots.numel():
            return None
        out = self.free_slots[:need_size]
        self.free_slots = self.free_slots[need_size:]
        return out.to(self.device)

    def free(self, slots: torch.Tensor) -> None:
        """Return slots (int64 ``[k]``, any device) to the free list."""
        if slots.numel() == 0:
            return
        self.free_slots = torch.cat((self.free_slots, slots.to("cpu", torch.int64)))

    def set_kv(self, layer_id: int, loc: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write ``k``, ``v`` (``[n, num_kv_heads, head_dim]``) to slots ``loc`` (int64 ``[n]``)."""
        self.k_buffer[layer_id].index_copy_(0, loc, k.to(self.dtype))
        self.v_buffer[layer_id].index_copy_(0, loc, v.to(self.dtype))

    def get_kv_buffer(self, layer_id: int):
        return self.k_buffer[layer_id], self.v_buffer[layer_id]

    def bytes(self) -> int:
        """Bytes held by the K and V buffers of all layers."""
        return 2 * self.num_layers * self.k_buffer[0].numel() * self.k_buffer[0].element_size()
