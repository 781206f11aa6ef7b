"""NoneCache tests: no reuse, and the same slot-ownership contract as RadixCache."""

from __future__ import annotations

import pytest
import torch

from sgl.engine.cache import EMPTY_HANDLE, NoneCache, make_cache_manager
from sgl.executor.memory_pool import TokenToKVPool


def make_cache(size: int = 16):
    pool = TokenToKVPool(size, num_layers=1, num_kv_heads=1, head_dim=1)
    return pool, make_cache_manager("none", pool)


def test_match_is_always_empty():
    pool, cache = make_cache()
    assert isinstance(cache, NoneCache)
    kv = pool.alloc(3)
    cache.cache_finished_req([1, 2, 3], kv, EMPTY_HANDLE, 0)
    m = cache.match_prefix([1, 2, 3])
    assert m.prefix_len == 0 and m.kv_indices.dtype == torch.int64 and m.kv_indices.shape == (0,)
    assert m.handle is EMPTY_HANDLE and cache.match_prefix([4]).handle is m.handle


def test_cache_finished_req_frees_every_slot():
    pool, cache = make_cache()
    kv = pool.alloc(5)
    assert pool.available_size() == 11
    cache.cache_finished_req([1, 2, 3, 4, 5], kv, EMPTY_HANDLE, 0)
    assert pool.available_size() == 16 and pool.free_slots[-5:].tolist() == kv.tolist()
    assert cache.total_size() == 0


def test_cache_unfinished_req_keeps_slots_then_finish_frees_all():
    pool, cache = make_cache()
    chunk1 = pool.alloc(4)
    r = cache.cache_unfinished_req([1, 2, 3, 4], chunk1, EMPTY_HANDLE, 0)
    assert r.prefix_len == 4 and r.kv_indices.tolist() == chunk1.tolist() and r.handle is EMPTY_HANDLE
    assert pool.available_size() == 12
    chunk2 = pool.alloc(2)
    cache.cache_finished_req([1, 2, 3, 4, 5, 6], torch.cat([r.kv_indices, chunk2]), r.handle, r.prefix_len)
    assert pool.available_size() == 16


def test_insert_takes_and_frees_slots():
    pool, cache = make_cache()
    kv = pool.alloc(3)
    assert cache.insert([1, 2, 3], kv) == 0
    assert pool.available_size() == 16


def test_sizes_evict_lock_and_integrity():
    pool, cache = make_cache()
    cache.lock(EMPTY_HANDLE)
    assert (cache.evictable_size(), cache.protected_size(), cache.total_size()) == (0, 0, 0)
    cache.unlock(EMPTY_HANDLE)
    assert cache.evict(10) == 0
    with pytest.raises(ValueError, match="num_tokens"):
        cache.evict(-1)
    cache.reset()
    cache.check_integrity()
    assert pool.available_size() == 16


def test_rejects_mismatched_kv_indices():
    pool, cache = make_cache()
    with pytest.raises(ValueError, match="kv_indices"):
        cache.cache_finished_req([1, 2], torch.tensor([1]), EMPTY_HANDLE, 0)
