"""DecodeKVStaging in the torch attention backend: the staged copy is appended while a
decode batch continues, rebuilt exactly when it must be, always equal to the pool's
K/V, and attention over it equals the gather path and a naive reference."""

from __future__ import annotations

import pytest
import torch
from model_utils import KVBook
from test_attention import HEAD_DIM, naive_attention

from sgl.core.config import AttentionConfig
from sgl.layers.attention import decode_staging, make_attention_backend
from sgl.layers.attention.decode_staging import DecodeKVStaging

NUM_HEADS, NUM_KV_HEADS, LAYERS = 6, 2, 2


class Pair:
    """A staging backend and a gathering one run on the same steps of one KVBook."""

    def __init__(self, staging_mb: int = 64, seed: int = 0):
        self.book = KVBook(num_layers=LAYERS, num_kv_heads=NUM_KV_HEADS, head_dim=HEAD_DIM, kv_size=1024, seed=seed)
        self.staged = make_attention_backend("torch", decode_staging_mb=staging_mb)
        self.gathered = make_attention_backend("torch", decode_staging_mb=0)
        self.gen = torch.Generator().manual_seed(seed)

    @property
    def staging(self) -> DecodeKVStaging:
        return self.staged.staging

    def step(self, fb, layers=range(LAYERS)):
        """Run ``layers`` of one step through both backends; checks outputs and the staged copy."""
        n = fb.input_ids.numel()
        for backend in (self.staged, self.gathered):
            backend.init_forward_metadata(fb)
        for layer in layers:
            q = torch.randn(n, NUM_HEADS * HEAD_DIM, generator=self.gen)
            k = torch.randn(n, NUM_KV_HEADS * HEAD_DIM, generator=self.gen)
            v = torch.randn(n, NUM_KV_HEADS * HEAD_DIM, generator=self.gen)
            args = (layer, NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, HEAD_DIM ** -0.5, fb)
            out = self.staged.forward(q, k, v, *args)
            ref = self.gathered.forward(q, k, v, *args)
            torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
            naive = naive_attention(q.view(n, NUM_HEADS, HEAD_DIM), fb, layer, NUM_HEADS, NUM_KV_HEADS,
                                    HEAD_DIM ** -0.5)
            torch.testing.assert_close(out, naive.reshape(n, -1), atol=1e-5, rtol=0)
            if self.staging.active:
                self.check_copy(fb, layer)

    def check_copy(self, fb, layer):
        """Every staged row up to each request's length is the pool's row, bit for bit."""
        k_st, v_st = self.staging._k[layer], self.staging._v[layer]
        k_buf, v_buf = fb.token_to_kv_pool.get_kv_buffer(layer)
        for b, (row, seq) in enumerate(zip(fb.req_pool_indices_cpu, fb.seq_lens_cpu)):
            slots = fb.req_to_token_pool.req_to_token[row, :seq].long()
            assert torch.equal(k_st[b, :, :seq], k_buf[slots].transpose(0, 1))
            assert torch.equal(v_st[b, :, :seq], v_buf[slots].transpose(0, 1))


def start(pair, lens=(7, 2, 12)):
    rows = [pair.book.new_request() for _ in lens]
    pair.step(pair.book.extend(rows, [[1] * n for n in lens]))
    return rows


def test_continuing_decode_batch_appends_instead_of_gathering():
    pair = Pair()
    rows = start(pair)
    assert not pair.staging.active and pair.staging.rebuilds == 0  # extend steps never stage
    for _ in range(6):
        pair.step(pair.book.decode(rows, [1] * len(rows)))
        assert pair.staging.active
    assert pair.staging.rebuilds == LAYERS  # gathered once per layer, then appended


def test_changed_batch_extend_or_skipped_layer_rebuilds():
    pair = Pair()
    rows = start(pair)
    pair.step(pair.book.decode(rows, [1, 1, 1]))
    pair.step(pair.book.decode(rows[:2], [1, 1]))  # a request left the batch
    assert pair.staging.rebuilds == 2 * LAYERS
    pair.step(pair.book.decode(rows[1::-1], [1, 1]))  # same requests, another order
    assert pair.staging.rebuilds == 3 * LAYERS
    pair.step(pair.book.extend([rows[2]], [[1, 1]]))  # an extend in between
    assert not pair.staging.active
    pair.step(pair.book.decode(rows[1::-1], [1, 1]))
    assert pair.staging.rebuilds == 4 * LAYERS
    pair.step(pair.book.decode(rows[1::-1], [1, 1]), layers=[0])  # layer 1 misses a step ...
    pair.step(pair.book.decode(rows[1::-1], [1, 1]))  # ... so only layer 1 is gathered again
    assert pair.staging.rebuilds == 4 * LAYERS + 1


def test_growth_past_capacity_rebuilds(monkeypatch):
    monkeypatch.setattr(decode_staging, "CAPACITY_STEP", 4)
    pair = Pair()
    rows = start(pair, lens=(3, 5))  # longest 5 -> capacity 12 (5 + 4 rounded up to 4)
    for step in range(1, 9):
        pair.step(pair.book.decode(rows, [1, 1]))
        # lengths 6..13: the copy made at 6 holds 12 rows, so 13 rebuilds
        assert pair.staging.rebuilds == LAYERS * (1 if step < 8 else 2), step


def test_over_budget_batch_gathers():
    pair = Pair(staging_mb=0)
    rows = start(pair)
    pair.step(pair.book.decode(rows, [1, 1, 1]))
    assert not pair.staging.active and pair.staging.rebuilds == 0
    staging = DecodeKVStaging(max_bytes=1000)  # far below one layer's copy
    assert not staging.begin_step(pair.book.decode(rows, [1, 1, 1]))


def test_staging_budget_is_validated():
    with pytest.raises(ValueError, match="max_bytes"):
        DecodeKVStaging(-1)
    with pytest.raises(ValueError, match="decode_staging_mb"):
        AttentionConfig(decode_staging_mb=-5)
    for bad in (-1, 0.9, "8", True):
        with pytest.raises(ValueError, match="whole number of MiB"):
            make_attention_backend("torch", decode_staging_mb=bad)
    assert AttentionConfig(backend="triton").backend_kwargs() == {}
    assert AttentionConfig(decode_staging_mb=8).backend_kwargs() == {"decode_staging_mb": 8}
