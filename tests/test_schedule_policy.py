"""Schedule policy tests: exact waiting-queue orders of fcfs, lpm and dfs-weight over every cache.

Setup (every cache): two distinct cached prefixes, A and B (8 tokens each,
so a whole number of pages for every page size here), and six waiting
requests in arrival order::

    r0: B+3   r1: miss   r2: A+2   r3: B+2   r4: miss   r5: B+3

dfs-weight must group by the cached node the match ends at: B (3 requests),
then the misses (2), then A (1), each group in arrival order. Under
``cache=lru`` the handle used to be a fresh tuple per match, so grouping by
``id(handle)`` lumped A with B (or split B): these tests caught that.
"""

from __future__ import annotations

import pytest

from sgl.engine.cache import EMPTY_HANDLE, CacheHandle, make_cache_manager
from sgl.engine.req import Req
from sgl.engine.sampling.sampling_params import SamplingParams
from sgl.engine.schedule_policy import DFSWeightPolicy, FCFSPolicy, LongestPrefixMatchPolicy, make_schedule_policy
from sgl.executor.memory_pool import TokenToKVPool

PREFIX_A = list(range(10, 18))
PREFIX_B = list(range(20, 28))
PROMPTS = [
    PREFIX_B + [100, 101, 102],  # r0: B
    [90, 91, 92],  # r1: miss
    PREFIX_A + [103, 104],  # r2: A
    PREFIX_B + [105, 106],  # r3: B
    [93, 94],  # r4: miss
    PREFIX_B + [107, 108, 109],  # r5: B
]

CACHES = {  # id -> (registry name, kwargs)
    "radix": ("radix", {}),
    "lru-page1": ("lru", {"page_size": 1}),
    "lru-page4": ("lru", {"page_size": 4}),
    "none": ("none", {}),
}
REUSING = ["radix", "lru-page1", "lru-page4"]

# Exact orders (indices of PROMPTS) for a cache that reuses prefixes ...
DFS_ORDER = [0, 3, 5, 1, 4, 2]  # B (3), misses (2), A (1)
LPM_ORDER = [0, 2, 3, 5, 1, 4]  # 8-token matches (B and A tie) in arrival order, then misses
FCFS_ORDER = [0, 1, 2, 3, 4, 5]
# ... and for the none cache, where every request is a miss in one group.
NONE_ORDER = FCFS_ORDER


def make_setup(cache_id: str, prompts=PROMPTS):
    """A 64-slot pool, the cache with A and B inserted, and one waiting Req per prompt
    (``created_time`` = arrival index)."""
    name, kw = CACHES[cache_id]
    pool = TokenToKVPool(64, num_layers=1, num_kv_heads=1, head_dim=1)
    cache = make_cache_manager(name, pool, **kw)
    for prefix in (PREFIX_A, PREFIX_B):
        slots = pool.alloc(len(prefix))
        already = cache.insert(prefix, slots)
        pool.free(slots[:already])
    reqs = []
    for i, prompt in enumerate(prompts):
        r = Req(rid=f"r{i}", input_ids=list(prompt), sampling_params=SamplingParams(max_new_tokens=4))
        r.created_time = float(i)
        reqs.append(r)
    return pool, cache, reqs


def order(reqs) -> list:
    return [int(r.rid[1:]) for r in reqs]


def sorted_by(policy, cache, reqs) -> list:
    waiting = list(reqs)
    policy.sort(waiting, cache)
    assert sorted(order(waiting)) == sorted(order(reqs))  # a permutation: nothing dropped or duplicated
    assert cache.protected_size() == 0  # sorting locks nothing
    cache.check_integrity()
    return order(waiting)


# --------------------------------------------------------------- handles
@pytest.mark.parametrize("cache_id", REUSING)
def test_matches_of_one_cached_prefix_share_one_handle(cache_id):
    _, cache, reqs = make_setup(cache_id)
    hs = [cache.match_prefix(r.fill_ids[: r.seq_len - 1]).handle for r in reqs]
    assert all(isinstance(h, CacheHandle) for h in hs)
    assert hs[0] is hs[3] is hs[5] and hash(hs[0]) == hash(hs[5])  # B
    assert hs[1] is hs[4]  # misses
    assert len({hs[0], hs[1], hs[2]}) == 3  # B, miss and A are three different handles


def test_none_cache_has_one_shared_empty_handle():
    _, cache, reqs = make_setup("none")
    assert all(cache.match_prefix(r.input_ids).handle is EMPTY_HANDLE for r in reqs)


# ---------------------------------------------------------------- orders
@pytest.mark.parametrize("cache_id", list(CACHES))
def test_dfs_weight_groups_by_cached_node_largest_first(cache_id):
    _, cache, reqs = make_setup(cache_id)
    expected = NONE_ORDER if cache_id == "none" else DFS_ORDER
    assert sorted_by(DFSWeightPolicy(), cache, reqs) == expected


@pytest.mark.parametrize("cache_id", list(CACHES))
def test_dfs_weight_order_does_not_depend_on_queue_order(cache_id):
    _, cache, reqs = make_setup(cache_id)
    expected = NONE_ORDER if cache_id == "none" else DFS_ORDER
    scrambled = [reqs[i] for i in (4, 2, 5, 0, 3, 1)]
    assert sorted_by(DFSWeightPolicy(), cache, scrambled) == expected


@pytest.mark.parametrize("cache_id", REUSING)
def test_dfs_weight_breaks_size_ties_by_earliest_arrival(cache_id):
    prompts = [PREFIX_B + [100, 101], PREFIX_A + [102, 103], PREFIX_A + [104], PREFIX_B + [105], [90, 91]]
    _, cache, reqs = make_setup(cache_id, prompts)
    # B (r0, r3) and A (r1, r2) both have two requests: B arrived first. Then the miss.
    assert sorted_by(DFSWeightPolicy(), cache, reqs) == [0, 3, 1, 2, 4]
    assert sorted_by(DFSWeightPolicy(), cache, reqs[1:]) == [1, 2, 3, 4]  # A, then the B and miss singletons


@pytest.mark.parametrize("cache_id", list(CACHES))
def test_lpm_orders_by_matched_length_then_arrival(cache_id):
    _, cache, reqs = make_setup(cache_id)
    expected = NONE_ORDER if cache_id == "none" else LPM_ORDER
    assert sorted_by(LongestPrefixMatchPolicy(), cache, list(reversed(reqs))) == expected


@pytest.mark.parametrize("cache_id", list(CACHES))
def test_fcfs_is_arrival_order(cache_id):
    _, cache, reqs = make_setup(cache_id)
    assert sorted_by(FCFSPolicy(), cache, list(reversed(reqs))) == FCFS_ORDER


def test_registry_builds_policies_by_name():
    assert isinstance(make_schedule_policy("dfs-weight"), DFSWeightPolicy)
    assert isinstance(make_schedule_policy("lpm"), LongestPrefixMatchPolicy)
    assert isinstance(make_schedule_policy("fcfs"), FCFSPolicy)
    with pytest.raises(ValueError, match="known"):
        make_schedule_policy("nope")


def test_lpm_falls_back_to_fcfs_on_long_queues():
    _, cache, reqs = make_setup("radix")
    policy = LongestPrefixMatchPolicy()
    policy.max_queue_for_matching = 3
    assert sorted_by(policy, cache, list(reversed(reqs))) == FCFS_ORDER
