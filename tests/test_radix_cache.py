"""RadixCache tests: exact match lengths, slots, lock counts, sizes and eviction order.

Style after vLLM v1's prefix-caching tests: small ``make_*`` factories and
exact expected values. The hypothesis state machine is in
test_radix_cache_properties.py.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sgl.engine.cache import (CACHE_MANAGERS, EMPTY_HANDLE, CacheHandle, NoneCache, RadixCache, RadixHandle,
                              make_cache_manager)
from sgl.executor.memory_pool import TokenToKVPool


def make_pool(size: int = 32) -> TokenToKVPool:
    return TokenToKVPool(size, num_layers=1, num_kv_heads=1, head_dim=1)


def make_cache(size: int = 32):
    pool = make_pool(size)
    return pool, RadixCache(pool)


def put(cache: RadixCache, pool: TokenToKVPool, tokens) -> torch.Tensor:
    """Allocate fresh slots for ``tokens``, insert them, free the duplicates; return the slots."""
    slots = pool.alloc(len(tokens))
    already = cache.insert(tokens, slots)
    pool.free(slots[:already])
    return slots


def node_key(node) -> list:
    return list(node.key)


def ids(t: torch.Tensor) -> list:
    return t.tolist()


# ----------------------------------------------------------------- matching
def test_match_on_empty_cache_is_empty():
    pool, cache = make_cache()
    m = cache.match_prefix([1, 2, 3])
    assert m.prefix_len == 0
    assert m.kv_indices.dtype == torch.int64 and m.kv_indices.shape == (0,)
    assert m.handle.node is cache.root_node and m.handle is cache.root_node.handle


def test_match_full_and_longer_query():
    pool, cache = make_cache()
    slots = put(cache, pool, [1, 2, 3])
    assert ids(slots) == [1, 2, 3]
    assert ids(cache.match_prefix([1, 2, 3]).kv_indices) == [1, 2, 3]
    assert ids(cache.match_prefix([1, 2, 3, 4, 5]).kv_indices) == [1, 2, 3]
    assert cache.match_prefix([2, 3]).prefix_len == 0


def test_partial_match_splits_node_and_keeps_slots():
    pool, cache = make_cache()
    put(cache, pool, [1, 2, 3, 4, 5])  # slots 1..5
    m = cache.match_prefix([1, 2, 3, 9])
    assert m.prefix_len == 3 and ids(m.kv_indices) == [1, 2, 3]
    assert node_key(m.handle.node) == [1, 2, 3] and ids(m.handle.node.value) == [1, 2, 3]
    (child,) = m.handle.node.children.values()
    assert node_key(child) == [4, 5] and ids(child.value) == [4, 5] and child.parent is m.handle.node
    assert cache.total_size() == 5 and cache.evictable_size() == 5
    assert ids(cache.match_prefix([1, 2, 3, 4, 5]).kv_indices) == [1, 2, 3, 4, 5]
    cache.check_integrity()


def test_match_ending_inside_edge_returns_exact_prefix():
    pool, cache = make_cache()
    put(cache, pool, [1, 2, 3, 4])
    m = cache.match_prefix([1, 2])
    assert ids(m.kv_indices) == [1, 2] and node_key(m.handle.node) == [1, 2]
    cache.check_integrity()


# ------------------------------------------------------------------ insert
def test_insert_returns_already_cached_length():
    pool, cache = make_cache()
    assert cache.insert([1, 2, 3], pool.alloc(3)) == 0
    assert cache.insert([1, 2, 3, 4], torch.tensor([20, 21, 22, 4])) == 3
    assert cache.insert([1, 2], torch.tensor([30, 31])) == 2
    assert cache.insert([1, 5], torch.tensor([40, 5])) == 1
    assert cache.insert([7], torch.tensor([7])) == 0
    # Only the new tails were taken: [1,2,3] keeps slots 1..3, then 4, 5 and 7.
    assert ids(cache.match_prefix([1, 2, 3, 4]).kv_indices) == [1, 2, 3, 4]
    assert ids(cache.match_prefix([1, 5]).kv_indices) == [1, 5]
    assert ids(cache.match_prefix([7]).kv_indices) == [7]
    assert cache.total_size() == 6


def test_insert_copies_kv_indices():
    pool, cache = make_cache()
    slots = pool.alloc(3)
    cache.insert([1, 2, 3], slots)
    slots.fill_(0)  # e.g. the caller reuses its req_to_token row
    assert ids(cache.match_prefix([1, 2, 3]).kv_indices) == [1, 2, 3]


def test_insert_rejects_bad_kv_indices():
    pool, cache = make_cache()
    with pytest.raises(ValueError, match="kv_indices"):
        cache.insert([1, 2, 3], torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="kv_indices"):
        cache.insert([1, 2], torch.tensor([1, 2], dtype=torch.int32))


def test_matches_ending_at_the_same_node_share_one_handle():
    pool, cache = make_cache(16)
    put(cache, pool, [1, 2, 3, 4])
    put(cache, pool, [7, 8])
    h = cache.match_prefix([1, 2, 3, 4, 9]).handle
    assert isinstance(h, RadixHandle) and isinstance(h, CacheHandle)
    assert cache.match_prefix([1, 2, 3, 4]).handle is h and {h: 1}[cache.match_prefix([1, 2, 3, 4, 5]).handle] == 1
    assert cache.match_prefix([7, 8]).handle != h
    assert cache.match_prefix([5]).handle is cache.match_prefix([]).handle is cache.root_node.handle
    upper = cache.match_prefix([1, 2]).handle  # splits [1,2,3,4]: the lower half keeps its node and handle
    assert upper != h and cache.match_prefix([1, 2, 3, 4]).handle is h and h.node.parent is upper.node
    with pytest.raises(dataclasses.FrozenInstanceError):
        h.node = upper.node
    with pytest.raises(ValueError, match="RadixHandle"):
        cache.lock(EMPTY_HANDLE)
    assert cache.evict(16) == 6
    put(cache, pool, [1, 2, 3, 4])
    h2 = cache.match_prefix([1, 2, 3, 4]).handle
    assert h2 != h  # a re-cached prefix is a new node with a new handle; the stale one is refused
    with pytest.raises(RuntimeError, match="evicted"):
        cache.lock(h)
    cache.check_integrity()


# ------------------------------------------------------------------- locks
def test_lock_counts_along_path_and_sizes():
    pool, cache = make_cache()
    put(cache, pool, [1, 2, 3, 4])
    put(cache, pool, [1, 2, 5, 6])  # splits into [1,2] -> {[3,4], [5,6]}
    ha = cache.match_prefix([1, 2, 3, 4]).handle
    hb = cache.match_prefix([1, 2, 5, 6]).handle
    a, b = ha.node, hb.node
    shared = a.parent
    assert node_key(shared) == [1, 2] and b.parent is shared
    cache.lock(ha)
    assert (shared.lock_ref, a.lock_ref, b.lock_ref) == (1, 1, 0)
    assert (cache.protected_size(), cache.evictable_size()) == (4, 2)
    cache.lock(hb)
    cache.lock(hb)
    assert (shared.lock_ref, a.lock_ref, b.lock_ref) == (3, 1, 2)
    assert (cache.protected_size(), cache.evictable_size()) == (6, 0)
    cache.check_integrity(idle=False)
    with pytest.raises(AssertionError, match="locked while idle"):
        cache.check_integrity()
    cache.unlock(ha)
    cache.unlock(hb)
    cache.unlock(hb)
    assert (shared.lock_ref, a.lock_ref, b.lock_ref) == (0, 0, 0)
    assert (cache.protected_size(), cache.evictable_size()) == (0, 6)
    with pytest.raises(RuntimeError, match="unlocked"):
        cache.unlock(ha)
    cache.check_integrity()


def test_split_of_locked_node_keeps_lock_on_both_halves():
    pool, cache = make_cache()
    put(cache, pool, [1, 2, 3, 4])
    h = cache.match_prefix([1, 2, 3, 4]).handle
    cache.lock(h)
    upper = cache.match_prefix([1, 2]).handle.node
    assert upper.lock_ref == 1 and h.node.lock_ref == 1 and h.node.parent is upper
    assert cache.protected_size() == 4
    cache.unlock(h)
    assert cache.protected_size() == 0 and upper.lock_ref == 0
    cache.check_integrity()


# ---------------------------------------------------------------- eviction
def test_evict_lru_leaves_in_exact_order():
    pool, cache = make_cache(16)
    put(cache, pool, [1, 2])
    put(cache, pool, [3, 4])
    put(cache, pool, [5, 6])
    cache.match_prefix([1, 2, 9])  # touch: LRU order is now [3,4], [5,6], [1,2]
    assert pool.available_size() == 10
    assert cache.evict(1) == 2
    assert pool.available_size() == 12 and ids(pool.free_slots[-2:]) == [3, 4]
    assert cache.match_prefix([3, 4]).prefix_len == 0
    assert cache.match_prefix([5, 6]).prefix_len == 2  # touch again: [1,2] is now oldest
    assert cache.evict(2) == 2
    assert cache.match_prefix([1, 2]).prefix_len == 0
    assert cache.evict(5) == 2 and cache.total_size() == 0
    assert pool.available_size() == 16
    assert cache.evict(1) == 0


def test_parent_becomes_evictable_after_children():
    pool, cache = make_cache(16)
    put(cache, pool, [1, 2, 3])
    put(cache, pool, [1, 2, 4])
    cache.match_prefix([1, 2, 4])
    assert cache.evict(1) == 1  # leaf [3]
    assert ids(cache.match_prefix([1, 2, 3]).kv_indices) == [1, 2]
    assert cache.evict(3) == 3  # leaf [4], then the bare parent [1,2]
    assert cache.total_size() == 0 and pool.available_size() == 16
    cache.check_integrity()


def test_evict_freed_count_and_pool_growth_match():
    pool, cache = make_cache(16)
    put(cache, pool, [1, 2, 3, 4, 5])
    put(cache, pool, [9, 9])
    before = pool.available_size()
    freed = cache.evict(3)  # oldest leaf is the whole 5-token edge
    assert freed == 5 and pool.available_size() == before + 5
    assert sorted(pool.free_slots[-5:].tolist()) == [1, 2, 3, 4, 5]


def test_locked_nodes_are_never_evicted():
    pool, cache = make_cache(16)
    put(cache, pool, [1, 2, 3])
    put(cache, pool, [1, 2, 7])
    put(cache, pool, [8])
    h = cache.match_prefix([1, 2, 3]).handle
    cache.lock(h)
    assert cache.evictable_size() == 2 and cache.protected_size() == 3
    assert cache.evict(100) == 2  # [7] and [8] only
    assert ids(cache.match_prefix([1, 2, 3]).kv_indices) == [1, 2, 3]
    assert cache.evictable_size() == 0 and cache.protected_size() == 3
    with pytest.raises(ValueError, match="num_tokens"):
        cache.evict(-1)
    cache.unlock(h)
    cache.check_integrity()


def test_lock_of_evicted_handle_raises():
    pool, cache = make_cache()
    put(cache, pool, [1, 2])
    h = cache.match_prefix([1, 2]).handle
    cache.evict(2)
    with pytest.raises(RuntimeError, match="evicted"):
        cache.lock(h)


# -------------------------------------------------------- scheduler helpers
def test_cache_finished_req_frees_exactly_the_duplicates():
    pool, cache = make_cache(16)
    # Two concurrent requests with the same prompt, both missing the cache.
    m3, m4 = cache.match_prefix([7, 8, 9]), cache.match_prefix([7, 8, 9])
    kv3, kv4 = pool.alloc(3), pool.alloc(3)
    cache.lock(m3.handle), cache.lock(m4.handle)
    cache.cache_finished_req([7, 8, 9], kv3, m3.handle, 0)
    assert pool.available_size() == 10 and cache.total_size() == 3
    cache.cache_finished_req([7, 8, 9], kv4, m4.handle, 0)
    assert pool.available_size() == 13 and ids(pool.free_slots[-3:]) == ids(kv4)
    # A request reusing 2 cached tokens, then adding 2 of its own.
    m = cache.match_prefix([7, 8, 5, 6])
    cache.lock(m.handle)
    own = pool.alloc(2)
    cache.cache_finished_req([7, 8, 5, 6], torch.cat([m.kv_indices, own]), m.handle, m.prefix_len)
    assert pool.available_size() == 11 and cache.total_size() == 5
    assert ids(cache.match_prefix([7, 8, 5, 6]).kv_indices) == [1, 2] + ids(own)
    assert cache.protected_size() == 0
    cache.check_integrity()


def test_cache_finished_req_frees_middle_duplicates_only():
    pool, cache = make_cache(16)
    put(cache, pool, [1, 2])  # slots 1, 2
    m = cache.match_prefix([1, 2, 3, 4, 5])
    cache.lock(m.handle)
    own = pool.alloc(3)  # the request computes 3, 4, 5 itself ...
    put(cache, pool, [1, 2, 3, 4])  # ... while another request caches 3, 4
    avail = pool.available_size()
    cache.cache_finished_req([1, 2, 3, 4, 5], torch.cat([m.kv_indices, own]), m.handle, 2)
    assert pool.available_size() == avail + 2 and ids(pool.free_slots[-2:]) == ids(own[:2])
    assert ids(cache.match_prefix([1, 2, 3, 4, 5]).kv_indices)[4] == own[2].item()
    cache.check_integrity()


def test_cache_unfinished_req_for_chunked_prefill():
    pool, cache = make_cache(16)
    tokens = [1, 2, 3, 4, 5, 6, 7, 8]
    m = cache.match_prefix(tokens)
    cache.lock(m.handle)
    chunk1 = pool.alloc(4)
    r = cache.cache_unfinished_req(tokens[:4], chunk1, m.handle, 0)
    assert r.prefix_len == 4 and ids(r.kv_indices) == ids(chunk1)
    assert cache.protected_size() == 4 and cache.evictable_size() == 0
    assert cache.evict(4) == 0
    other = put(cache, pool, tokens[:6])  # another request caches 5, 6 meanwhile
    chunk2 = pool.alloc(4)
    avail = pool.available_size()
    r2 = cache.cache_unfinished_req(tokens, torch.cat([r.kv_indices, chunk2]), r.handle, 4)
    assert pool.available_size() == avail + 2 and ids(pool.free_slots[-2:]) == ids(chunk2[:2])
    assert ids(r2.kv_indices) == ids(chunk1) + ids(other[4:]) + ids(chunk2[2:])
    assert cache.protected_size() == 8 and cache.evictable_size() == 0
    cache.cache_finished_req(tokens, r2.kv_indices, r2.handle, r2.prefix_len)
    assert cache.protected_size() == 0 and cache.evictable_size() == 8
    assert pool.available_size() == 8
    cache.check_integrity()


def test_reset_returns_pool_to_start():
    pool, cache = make_cache(16)
    put(cache, pool, [1, 2, 3])
    put(cache, pool, [1, 4])
    h = cache.match_prefix([1, 4]).handle
    cache.lock(h)
    with pytest.raises(RuntimeError, match="locked"):
        cache.reset()
    cache.unlock(h)
    cache.reset()
    assert pool.available_size() == 16 and sorted(pool.free_slots.tolist()) == list(range(1, 17))
    assert cache.total_size() == 0 and cache.match_prefix([1, 2, 3]).prefix_len == 0
    cache.check_integrity()


def test_check_integrity_detects_corruption():
    pool, cache = make_cache(16)
    put(cache, pool, [1, 2, 3])
    put(cache, pool, [4, 5])
    cache.evictable_size_ += 1
    with pytest.raises(AssertionError, match="evictable_size_"):
        cache.check_integrity()
    cache.evictable_size_ -= 1
    leaf = cache.match_prefix([4, 5]).handle.node
    leaf.value = torch.tensor([1, 2])  # slot 1 now owned twice
    with pytest.raises(AssertionError, match="two tree nodes"):
        cache.check_integrity()
    leaf.value = torch.tensor([14, 15])  # still in the pool's free list
    with pytest.raises(AssertionError, match="free list"):
        cache.check_integrity()


def test_pretty_print_lists_nodes(capsys):
    pool, cache = make_cache()
    put(cache, pool, [1, 2, 3])
    put(cache, pool, [1, 2, 4])
    text = cache.pretty_print()
    assert text.splitlines()[1:] == ["  [1, 2] -> [1, 2] lock=0 t=2", "    [3] -> [3] lock=0 t=1",
                                     "    [4] -> [6] lock=0 t=2"]
    assert capsys.readouterr().out.strip() == text


def test_registry_builds_by_name():
    pool = make_pool()
    assert isinstance(make_cache_manager("radix", pool), RadixCache)
    assert isinstance(make_cache_manager("none", pool), NoneCache)
    assert {"radix", "none"} <= set(CACHE_MANAGERS.names())
    with pytest.raises(ValueError, match="known"):
        make_cache_manager("nope", pool)
