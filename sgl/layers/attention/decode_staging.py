"""DecodeKVStaging: a dense copy of a decode batch's K/V, extended in place step after step.

The torch attention backend reads each request's K/V out of the paged
TokenToKVPool with a gather (``index_select``) in every layer of every step.
For a decode batch that gather copies the batch's whole KV (on the bundled
model at batch 32 and ~100 tokens of context: 4.4 MB per layer, 14% of the
step on a 2-core CPU), although only one token per request is new.

While consecutive DECODE steps run the same requests in the same order, this
class keeps their K/V in a dense ``[bs, num_kv_heads, capacity, head_dim]``
buffer per layer (the layout SDPA reads fastest), gathered once when the batch
forms and then extended by one row per request and layer each step. Any other
step (an extend, a changed batch, a different pool, a sequence past the
capacity) rebuilds it from the pool, so the pool stays the single source of
truth: the staged rows are always a byte-for-byte copy of the pool's.

The copy costs memory, ``2 * num_layers * bs * num_kv_heads * capacity *
head_dim * itemsize`` bytes; above ``max_bytes`` the backend keeps gathering.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional, Tuple

import torch

if TYPE_CHECKING:  # the executor is a higher layer: type annotations only
    from sgl.executor.forward_batch import ForwardBatch


# Rows added to a rebuilt buffer beyond the longest sequence, so that many
# decode steps append before the next rebuild (a multiple of this, in tokens).
CAPACITY_STEP = 64


class DecodeKVStaging:
    """Dense per-layer K/V of the current decode batch (see module docstring).

    Args:
        max_bytes: the most memory the staged copy may take (bytes); 0 disables it.

    Use: :meth:`begin_step` once per step (before the layers run), then
    :meth:`keys_values` in each layer after the layer's new K/V is in the pool.
    """

    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._storage: Optional[torch.Tensor] = None  # flat buffer, reused across rebuilds
        self._k: list = []  # per layer [bs, kvh, capacity, d] views of _storage
        self._v: list = []
        self._pool = None
        self._rows: Tuple[int, ...] = ()  # req_pool_indices of the staged batch, in order
        self._seq_lens: Tuple[int, ...] = ()
        self._max_seq = 0
        self._capacity = 0
        self._step = 0
        self._layer_step: list = []  # step at which each layer's copy was last brought up to date
        self._append_index: Optional[torch.Tensor] = None
        self.rebuilds = 0  # layer copies gathered in full from the pool (for tests and profiling)

    @property
    def active(self) -> bool:
        """True when this step's decode attention reads the staged copy."""
        return bool(self._k)

    def invalidate(self) -> None:
        """Forget the staged batch (the next decode step rebuilds); the buffer is kept for reuse."""
        self._k, self._v, self._pool, self._rows, self._seq_lens = [], [], None, (), ()

    def begin_step(self, fb: ForwardBatch) -> bool:
        """Prepare for a step; returns :attr:`active`. Non-decode steps invalidate the copy.

        A decode step appends when it continues the previous decode step (same
        pool, same ``req_pool_indices`` in the same order, every sequence one
        token longer, still within capacity); otherwise the copy is rebuilt
        from the pool layer by layer, or dropped when it would exceed ``max_bytes``.
        A layer that was not run in the previous step is rebuilt on its own.
        """
        if not fb.forward_mode.is_decode() or self.max_bytes == 0:
            self.invalidate()
            return False
        pool, seq_lens = fb.token_to_kv_pool, tuple(fb.seq_lens_cpu)
        rows = fb.req_pool_indices_cpu
        rows = tuple(fb.req_pool_indices.tolist()) if rows is None else tuple(rows)
        max_seq = max(seq_lens)
        continues = (self.active and pool is self._pool and max_seq <= self._capacity
                     and rows == self._rows and all(s == p + 1 for s, p in zip(seq_lens, self._seq_lens)))
        self._step += 1
        if not continues:
            if not self._allocate(pool, len(seq_lens), max_seq):
                self.invalidate()
                return False
            self._layer_step = [-1] * pool.num_layers
        bs, kvh, cap = len(seq_lens), pool.num_kv_heads, self._capacity
        # row of (request b, head h, position seq_len_b - 1) in a [bs * kvh * cap, d] view
        head_rows = torch.arange(bs * kvh, device=fb.seq_lens.device) * cap
        self._append_index = head_rows + (fb.seq_lens - 1).repeat_interleave(kvh)
        self._pool, self._rows, self._seq_lens, self._max_seq = pool, rows, seq_lens, max_seq
        return True

    def _allocate(self, pool, bs: int, max_seq: int) -> bool:
        cap = -(-(max_seq + CAPACITY_STEP) // CAPACITY_STEP) * CAPACITY_STEP
        kvh, d, layers = pool.num_kv_heads, pool.head_dim, pool.num_layers
        itemsize = torch.empty((), dtype=pool.dtype).element_size()
        need = 2 * layers * bs * kvh * cap * d
        if need * itemsize > self.max_bytes:
            return False
        if (self._storage is None or self._storage.numel() < need or self._storage.dtype != pool.dtype
                or self._storage.device != pool.device):
            self._storage = None  # drop the old buffer before allocating the new one
            # zeros, not empty: masked padding columns still enter q.k, and garbage could be NaN
            self._storage = torch.zeros(need, dtype=pool.dtype, device=pool.device)
        views = self._storage[:need].view(layers, 2, bs, kvh, cap, d)
        self._k, self._v = list(views[:, 0]), list(views[:, 1])
        self._capacity = cap
        return True

    def keys_values(self, layer_id: int, fb: ForwardBatch, gather: Callable[[], Tuple[torch.Tensor, torch.Tensor]]):
        """K and V of layer ``layer_id``: ``[bs, num_kv_heads, max_seq, head_dim]`` views (pool dtype).

        Args:
            gather: returns the layer's K and V gathered from the pool, ``[bs, num_kv_heads,
                max_seq, head_dim]`` each; called only when the layer's copy is rebuilt.
        """
        k_st, v_st, max_seq = self._k[layer_id], self._v[layer_id], self._max_seq
        if self._layer_step[layer_id] != self._step - 1:  # new batch, or the layer missed a step
            k, v = gather()
            k_st[:, :, :max_seq].copy_(k)
            v_st[:, :, :max_seq].copy_(v)
            self.rebuilds += 1
        else:
            k_buf, v_buf = fb.token_to_kv_pool.get_kv_buffer(layer_id)
            d = k_buf.shape[-1]
            loc = fb.out_cache_loc
            k_st.view(-1, d).index_copy_(0, self._append_index, k_buf.index_select(0, loc).view(-1, d))
            v_st.view(-1, d).index_copy_(0, self._append_index, v_buf.index_select(0, loc).view(-1, d))
        self._layer_step[layer_id] = self._step
        return k_st[:, :, :max_seq], v_st[:, :, :max_seq]
