"""LRUCache tests: page-granular matches, chained hashes, exact slot ownership and eviction order.

Style after vLLM v1's prefix-caching tests: small ``make_*`` factories and
exact expected slots. The hypothesis state machine is in
test_lru_cache_properties.py. The last test runs the real engine with ``cache=lru``.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sgl.engine.cache import CACHE_MANAGERS, EMPTY_HANDLE, CacheHandle, LRUCache, LRUHandle, make_cache_manager
from sgl.executor.memory_pool import TokenToKVPool

PS = 4  # page size of the unit tests


def make_pool(size: int = 32) -> TokenToKVPool:
    return TokenToKVPool(size, num_layers=1, num_kv_heads=1, head_dim=1)


def make_cache(size: int = 32, page_size: int = PS, **kw):
    pool = make_pool(size)
    return pool, LRUCache(pool, page_size=page_size, **kw)


def put(cache: LRUCache, pool: TokenToKVPool, tokens) -> torch.Tensor:
    """Allocate fresh slots for ``tokens``, insert them, free the caller's duplicates; return the slots."""
    slots = pool.alloc(len(tokens))
    already = cache.insert(tokens, slots)
    pool.free(slots[:already])
    return slots


def ids(t: torch.Tensor) -> list:
    return t.tolist()


def rng(a: int, b: int) -> list:
    return list(range(a, b))


# ----------------------------------------------------------------- matching
def test_match_on_empty_cache_is_empty():
    pool, cache = make_cache()
    m = cache.match_prefix([1, 2, 3, 4, 5])
    assert m.prefix_len == 0 and m.handle is EMPTY_HANDLE
    assert m.kv_indices.dtype == torch.int64 and m.kv_indices.shape == (0,)


def test_partial_pages_are_freed_and_never_match():
    pool, cache = make_cache()
    tokens = rng(100, 110)  # 2 full pages + 2 tokens
    slots = pool.alloc(10)
    assert cache.insert(tokens, slots) == 0
    assert pool.available_size() == 24 and ids(pool.free_slots[-2:]) == [9, 10]  # partial page freed by the cache
    assert cache.total_size() == 8 and cache.num_blocks() == 2
    assert ids(cache.match_prefix(tokens).kv_indices) == rng(1, 9)
    assert ids(cache.match_prefix(tokens[:7]).kv_indices) == rng(1, 5)  # 2nd page incomplete in the query
    assert cache.match_prefix(tokens[:3]).prefix_len == 0
    assert ids(cache.match_prefix(tokens[:8] + [7, 7, 7, 7]).kv_indices) == rng(1, 9)
    assert cache.match_prefix(tokens[:5] + [0, 0, 0]).prefix_len == 4
    m = cache.match_prefix(torch.tensor(tokens))
    assert m.prefix_len == 8 and len(m.handle.blocks) == 2
    cache.check_integrity()


def test_chained_hash_depends_on_the_whole_prefix():
    pool, cache = make_cache()
    put(cache, pool, [1, 2, 3, 4, 5, 6, 7, 8])
    assert cache.match_prefix([9, 9, 9, 9, 5, 6, 7, 8]).prefix_len == 0  # same 2nd page, other 1st page
    assert cache.match_prefix([5, 6, 7, 8]).prefix_len == 0
    assert cache.match_prefix([1, 2, 3, 4, 5, 6, 7, 9]).prefix_len == 4
    other = put(cache, pool, [9, 9, 9, 9, 5, 6, 7, 8])
    assert cache.num_blocks() == 4  # the repeated page content is a new block after another prefix
    assert ids(cache.match_prefix([9, 9, 9, 9, 5, 6, 7, 8]).kv_indices) == ids(other)
    assert ids(cache.match_prefix([1, 2, 3, 4, 5, 6, 7, 8]).kv_indices) == rng(1, 9)
    cache.check_integrity()


# ------------------------------------------------------------------ insert
def test_insert_returns_leading_cached_pages_and_takes_the_rest():
    pool, cache = make_cache()
    a, b = rng(10, 18), rng(20, 24)
    assert cache.insert(a, pool.alloc(8)) == 0  # slots 1..8
    assert pool.available_size() == 24
    kv = pool.alloc(14)  # slots 9..22 for a + b + 2 tokens
    assert cache.insert(a + b + [0, 0], kv) == 8
    # The cache kept kv[8:12] (page b) and freed kv[12:14] (partial); kv[:8] are the caller's duplicates.
    assert pool.available_size() == 12 and ids(pool.free_slots[-2:]) == [21, 22]
    pool.free(kv[:8])
    assert pool.available_size() == 20 and cache.total_size() == 12
    assert ids(cache.match_prefix(a + b).kv_indices) == rng(1, 9) + rng(17, 21)
    kv = pool.alloc(7)
    assert cache.insert(a[:4] + [5, 5, 5], kv) == 4  # one cached page, then a partial one
    assert pool.available_size() == 16  # the cache freed the 3 partial-page slots
    pool.free(kv[:4])
    assert cache.insert([1, 2], pool.alloc(2)) == 0  # shorter than a page: nothing cached, both slots freed
    assert pool.available_size() == 20 and cache.total_size() == 12
    assert cache.insert(a, torch.tensor([30, 31, 32, 33, 34, 35, 36, 37])) == 8  # all cached: nothing taken
    assert pool.available_size() == 20
    cache.check_integrity()


def test_insert_copies_kv_indices():
    pool, cache = make_cache()
    slots = pool.alloc(4)
    cache.insert([1, 2, 3, 4], slots)
    slots.fill_(0)  # e.g. the caller reuses its req_to_token row
    assert ids(cache.match_prefix([1, 2, 3, 4]).kv_indices) == [1, 2, 3, 4]


def test_bad_arguments_raise_value_error():
    pool, cache = make_cache()
    with pytest.raises(ValueError, match="kv_indices"):
        cache.insert([1, 2, 3], torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="kv_indices"):
        cache.insert([1, 2], torch.tensor([1, 2], dtype=torch.int32))
    for bad in (0, -4, 2.0, True):
        with pytest.raises(ValueError, match="page_size"):
            LRUCache(pool, page_size=bad)
    with pytest.raises(ValueError, match="handle"):
        cache.lock(None)


def test_hash_collisions_are_detected_not_served():
    pool, cache = make_cache(page_size=2, hash_fn=lambda parent, tokens: 7)  # every page hashes to 7
    kv = pool.alloc(4)
    assert cache.insert([1, 2, 3, 4], kv) == 0
    # Page [3, 4] collides with page [1, 2]: not cached, so the cache freed its slots.
    assert cache.total_size() == 2 and ids(pool.free_slots[-2:]) == [3, 4]
    assert ids(cache.match_prefix([1, 2, 3, 4]).kv_indices) == [1, 2]
    assert cache.match_prefix([5, 6]).prefix_len == 0
    assert cache.insert([5, 6], pool.alloc(2)) == 0 and pool.available_size() == 30
    m = cache.match_prefix([1, 2, 3, 4])
    cache.lock(m.handle)
    kv = torch.cat([m.kv_indices, pool.alloc(2)])
    r = cache.cache_unfinished_req([1, 2, 3, 4], kv, m.handle, 2)
    assert ids(r.kv_indices) == [1, 2] and pool.available_size() == 28  # the request keeps its collided page
    cache.cache_finished_req([1, 2, 3, 4], kv, r.handle, 2)
    assert pool.available_size() == 30
    cache.check_integrity()


# ------------------------------------------------------------------- locks
def test_lock_counts_blocks_and_sizes():
    pool, cache = make_cache()
    put(cache, pool, rng(0, 8))  # blocks A0 (0..3), A1 (4..7)
    put(cache, pool, rng(0, 4) + rng(50, 54))  # block D1 after A0
    ha = cache.match_prefix(rng(0, 8)).handle
    hd = cache.match_prefix(rng(0, 4) + rng(50, 54)).handle
    a, d = ha.blocks, hd.blocks
    assert a[0] is d[0] and len(a) == len(d) == 2
    cache.lock(ha)
    assert [b.ref_count for b in a + d[1:]] == [1, 1, 0]
    assert (cache.protected_size(), cache.evictable_size()) == (8, 4)
    cache.lock(hd)
    cache.lock(hd)
    assert [b.ref_count for b in a + d[1:]] == [3, 1, 2]
    assert (cache.protected_size(), cache.evictable_size()) == (12, 0)
    cache.check_integrity(idle=False)
    with pytest.raises(AssertionError, match="locked while idle"):
        cache.check_integrity()
    cache.unlock(ha)
    cache.unlock(hd)
    cache.unlock(hd)
    assert [b.ref_count for b in a + d[1:]] == [0, 0, 0]
    assert (cache.protected_size(), cache.evictable_size()) == (0, 12)
    with pytest.raises(RuntimeError, match="unlocked"):
        cache.unlock(ha)
    cache.lock(EMPTY_HANDLE)  # the empty match's handle: no-ops
    cache.unlock(EMPTY_HANDLE)
    cache.check_integrity()


def test_matches_ending_at_the_same_block_share_one_handle():
    pool, cache = make_cache()
    put(cache, pool, rng(0, 8))
    put(cache, pool, rng(0, 4) + rng(50, 54))
    h = cache.match_prefix(rng(0, 8)).handle
    assert isinstance(h, LRUHandle) and isinstance(h, CacheHandle)
    assert cache.match_prefix(rng(0, 10)).handle is h  # the trailing partial page does not matter
    assert {h: 1}[cache.match_prefix(rng(0, 8) + [1, 1, 1, 1]).handle] == 1
    d = cache.match_prefix(rng(0, 4) + rng(50, 54)).handle
    assert d != h and d.blocks[0] is h.blocks[0]
    short = cache.match_prefix(rng(0, 4) + [9, 9, 9, 9]).handle
    assert short is h.blocks[0].handle and short.blocks == h.blocks[:1]
    assert cache.match_prefix([9, 9, 9, 9]).handle is EMPTY_HANDLE and cache.match_prefix([]).handle is EMPTY_HANDLE
    with pytest.raises(dataclasses.FrozenInstanceError):
        h.block = d.block
    assert cache.evict(100) == 12
    put(cache, pool, rng(0, 8))
    assert cache.match_prefix(rng(0, 8)).handle != h  # new blocks, new handle; the stale one is refused
    with pytest.raises(RuntimeError, match="evicted"):
        cache.lock(h)
    cache.check_integrity()


def test_lock_of_evicted_handle_raises():
    pool, cache = make_cache()
    put(cache, pool, rng(0, 4))
    h = cache.match_prefix(rng(0, 4)).handle
    assert cache.evict(4) == 4
    with pytest.raises(RuntimeError, match="evicted"):
        cache.lock(h)
    put(cache, pool, rng(0, 4))  # a new block under the same hash is not the old handle's
    with pytest.raises(RuntimeError, match="evicted"):
        cache.lock(h)


# ---------------------------------------------------------------- eviction
def test_evict_lru_blocks_in_exact_order():
    pool, cache = make_cache(16, page_size=2)
    put(cache, pool, [1, 2])  # slots 1, 2
    put(cache, pool, [3, 4])  # slots 3, 4
    put(cache, pool, [5, 6])  # slots 5, 6
    cache.match_prefix([1, 2, 9])  # touch: LRU order is now [3,4], [5,6], [1,2]
    assert pool.available_size() == 10
    assert cache.evict(1) == 2  # whole blocks only
    assert pool.available_size() == 12 and ids(pool.free_slots[-2:]) == [3, 4]
    assert cache.match_prefix([3, 4]).prefix_len == 0
    assert cache.match_prefix([5, 6]).prefix_len == 2  # touch again: [1,2] is now the oldest
    assert cache.evict(2) == 2 and ids(pool.free_slots[-2:]) == [1, 2]
    assert cache.evict(5) == 2 and cache.total_size() == 0
    assert pool.available_size() == 16 and cache.evict(1) == 0 and cache.evict(0) == 0


def test_evict_chain_from_its_tail_and_oldest_chain_first():
    pool, cache = make_cache(16, page_size=2)
    put(cache, pool, [1, 2, 3, 4, 5, 6])  # chain X: slots 1-2, 3-4, 5-6 (one access time)
    put(cache, pool, [7, 8, 9, 9])  # chain Y: slots 7-8, 9-10 (newer)
    assert cache.evict(2) == 2 and ids(pool.free_slots[-2:]) == [5, 6]  # X's last page first
    assert ids(cache.match_prefix([1, 2, 3, 4, 5, 6]).kv_indices) == [1, 2, 3, 4]  # X is now newest
    assert cache.evict(6) == 6 and ids(pool.free_slots[-6:]) == [9, 10, 7, 8, 3, 4]
    assert ids(cache.match_prefix([1, 2, 3, 4]).kv_indices) == [1, 2]
    cache.check_integrity()


def test_locked_blocks_are_never_evicted():
    pool, cache = make_cache(16, page_size=2)
    put(cache, pool, [1, 2, 3, 4])
    put(cache, pool, [1, 2, 7, 7])
    put(cache, pool, [8, 8])
    h = cache.match_prefix([1, 2, 3, 4]).handle
    cache.lock(h)
    assert cache.evictable_size() == 4 and cache.protected_size() == 4
    assert cache.evict(100) == 4 and sorted(ids(pool.free_slots[-4:])) == [7, 8, 9, 10]  # [7,7] and [8,8]
    assert ids(cache.match_prefix([1, 2, 3, 4]).kv_indices) == [1, 2, 3, 4]
    assert cache.evictable_size() == 0 and cache.protected_size() == 4 and cache.evict(2) == 0
    with pytest.raises(ValueError, match="num_tokens"):
        cache.evict(-1)
    cache.unlock(h)
    cache.check_integrity()


def test_reset_returns_pool_to_start():
    pool, cache = make_cache(16)
    put(cache, pool, rng(0, 10))
    put(cache, pool, rng(0, 4) + [9, 9, 9, 9])
    h = cache.match_prefix(rng(0, 8)).handle
    cache.lock(h)
    with pytest.raises(RuntimeError, match="locked"):
        cache.reset()
    cache.unlock(h)
    cache.reset()
    assert pool.available_size() == 16 and sorted(pool.free_slots.tolist()) == rng(1, 17)
    assert cache.total_size() == 0 and cache.match_prefix(rng(0, 8)).prefix_len == 0
    cache.check_integrity()


def test_check_integrity_detects_corruption():
    pool, cache = make_cache(32)
    put(cache, pool, rng(0, 8))
    put(cache, pool, [9, 9, 9, 9])
    first, second = cache.match_prefix(rng(0, 8)).handle.blocks
    (other,) = cache.match_prefix([9, 9, 9, 9]).handle.blocks
    cache.evictable_size_ += 1
    with pytest.raises(AssertionError, match="evictable_size_"):
        cache.check_integrity()
    cache.evictable_size_ -= 1
    saved = other.slots
    other.slots = torch.tensor([1, 30, 31, 32])  # slot 1 is also first's
    with pytest.raises(AssertionError, match="two blocks"):
        cache.check_integrity()
    other.slots = torch.tensor([29, 30, 31, 32])  # still in the pool's free list
    with pytest.raises(AssertionError, match="free list"):
        cache.check_integrity()
    other.slots = saved
    other.tokens = (9, 9, 9, 8)
    with pytest.raises(AssertionError, match="do not hash"):
        cache.check_integrity()
    other.tokens = (9, 9, 9, 9)
    second.ref_count = 1  # locked child under an unlocked parent
    cache.evictable_size_, cache.protected_size_ = 8, 4
    with pytest.raises(AssertionError, match="below its children"):
        cache.check_integrity(idle=False)
    second.ref_count, cache.evictable_size_, cache.protected_size_ = 0, 12, 0
    second.last_access_time = first.last_access_time + 1
    with pytest.raises(AssertionError, match="used after its parent"):
        cache.check_integrity()
    del cache._blocks[first.block_hash]
    cache.evictable_size_ -= PS
    with pytest.raises(AssertionError, match="orphan"):
        cache.check_integrity()


# -------------------------------------------------------- scheduler helpers
def test_cache_finished_req_frees_duplicates_and_partial_pages():
    pool, cache = make_cache(32)
    prompt = rng(10, 16)  # 1 full page + 2 tokens
    # Two concurrent requests with the same prompt, both missing the cache.
    m1, m2 = cache.match_prefix(prompt), cache.match_prefix(prompt)
    kv1, kv2 = pool.alloc(6), pool.alloc(6)  # slots 1..6, 7..12
    cache.lock(m1.handle), cache.lock(m2.handle)
    cache.cache_finished_req(prompt, kv1, m1.handle, 0)
    assert pool.available_size() == 22 and ids(pool.free_slots[-2:]) == [5, 6]
    cache.cache_finished_req(prompt, kv2, m2.handle, 0)
    assert pool.available_size() == 22 + 6  # duplicate page 7..10 and partial 11, 12
    assert sorted(ids(pool.free_slots[-6:])) == rng(7, 13) and cache.total_size() == 4
    # A request reusing the cached page, then computing 7 tokens of its own.
    longer = prompt[:4] + rng(30, 37)
    m = cache.match_prefix(longer)
    assert ids(m.kv_indices) == [1, 2, 3, 4]
    cache.lock(m.handle)
    own = pool.alloc(7)
    cache.cache_finished_req(longer, torch.cat([m.kv_indices, own]), m.handle, m.prefix_len)
    assert pool.available_size() == 24 and cache.total_size() == 8
    assert ids(pool.free_slots[-3:]) == ids(own[4:])
    assert ids(cache.match_prefix(longer).kv_indices) == [1, 2, 3, 4] + ids(own[:4])
    assert cache.protected_size() == 0
    cache.check_integrity()


def test_cache_unfinished_req_keeps_the_partial_page_with_the_request():
    pool, cache = make_cache(32)
    tokens = rng(10, 20)  # 10 tokens, prefilled in chunks of 6 and 4
    m = cache.match_prefix(tokens)
    cache.lock(m.handle)
    chunk1 = pool.alloc(6)  # slots 1..6
    r = cache.cache_unfinished_req(tokens[:6], chunk1, m.handle, 0)
    assert r.prefix_len == 4 and ids(r.kv_indices) == [1, 2, 3, 4]
    assert pool.available_size() == 26  # slots 5, 6 stay the request's
    assert (cache.protected_size(), cache.evictable_size()) == (4, 0) and cache.evict(4) == 0
    other = put(cache, pool, tokens[:8])  # another request caches page 2 meanwhile (slots 11..14)
    assert pool.available_size() == 26 - 4
    row = torch.cat([r.kv_indices, chunk1[4:], pool.alloc(4)])  # the request's row: slots 1..4, 5, 6, 15..18
    avail = pool.available_size()
    r2 = cache.cache_unfinished_req(tokens, row, r.handle, 4)
    assert pool.available_size() == avail + 4 and ids(pool.free_slots[-4:]) == [5, 6, 15, 16]  # duplicates
    assert ids(r2.kv_indices) == [1, 2, 3, 4] + ids(other[4:8])
    assert (cache.protected_size(), cache.evictable_size()) == (8, 0)
    row = torch.cat([r2.kv_indices, row[8:]])  # the scheduler rewrites the row's first 8 positions
    # Slots partition the pool: free + cached + the request's own 17, 18.
    assert pool.available_size() + cache.total_size() + 2 == 32
    cache.cache_finished_req(tokens, row, r2.handle, r2.prefix_len)
    assert (cache.protected_size(), cache.evictable_size()) == (0, 8)
    assert pool.available_size() == 24 and ids(pool.free_slots[-2:]) == [17, 18]
    cache.check_integrity()


def test_registry_and_config_build_lru():
    from sgl.core.config import compose_config

    pool = make_pool()
    cache = make_cache_manager("lru", pool)
    assert isinstance(cache, LRUCache) and cache.page_size == 16 and "lru" in CACHE_MANAGERS.names()
    assert make_cache_manager("lru", pool, page_size=4).page_size == 4
    cfg = compose_config(["cache=lru", "cache.page_size=8"])
    assert (cfg.cache.name, cfg.cache.page_size) == ("lru", 8)
    assert compose_config(["cache=lru"]).cache.page_size == 16


# ------------------------------------------------------------ end to end
@pytest.mark.slow
def test_engine_with_lru_cache_matches_no_cache():
    import sgl

    greedy = {"temperature": 0, "max_new_tokens": 12}
    lru = sgl.Engine(cache="lru", log_interval=0, max_total_tokens=2048, chunked_prefill_size=24)
    none = sgl.Engine(cache="none", log_interval=0, max_total_tokens=2048)
    try:
        chat_prompts = [lru.tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                          add_generation_prompt=True)
                        for q in ("What is the capital of France?", "Name a primary color.", "What is 2+2?")]
        baseline = lru.runner.token_to_kv_pool.available_size()
        ref = none.generate(chat_prompts, greedy)
        outs = lru.generate(chat_prompts, greedy)
        assert [o["output_ids"] for o in outs] == [o["output_ids"] for o in ref]
        again = lru.generate(chat_prompts[0], greedy)
        n = again["meta_info"]["prompt_tokens"]
        assert again["meta_info"]["cached_tokens"] == (n - 1) // 16 * 16 > 0
        assert again["output_ids"] == ref[0]["output_ids"]
        lru.check_integrity()
        info = lru.get_server_info()
        assert info["cache_total_tokens"] % 16 == 0 and info["cache_total_tokens"] > 0
        assert lru.flush_cache()
        assert lru.runner.token_to_kv_pool.available_size() == baseline
    finally:
        lru.shutdown()
        none.shutdown()
