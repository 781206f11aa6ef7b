"""Shared skeleton of the cache managers' hypothesis state machines
(test_radix_cache_properties, test_lru_cache_properties).

A machine drives one cache over a small pool: the test's own locks, running
requests that own the slots ``kv[prefix_len:]``, allocation that evicts when
the pool is short, and a teardown that releases everything and checks that
every slot is back in the pool. Subclasses keep a reference model and define
``evict(n)`` (evict and check against the model), the insert/match rules and
the invariants.
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

from sgl.executor.memory_pool import TokenToKVPool

POOL_SIZE = 24


def make_pool(size: int = POOL_SIZE) -> TokenToKVPool:
    """A one-layer, one-head, head_dim-1 pool of ``size`` token slots (slots 1..size)."""
    return TokenToKVPool(size, num_layers=1, num_kv_heads=1, head_dim=1)


class CacheMachine(RuleBasedStateMachine):
    """Base state machine; ``cache`` is a CacheManager over ``pool``."""

    def __init__(self, pool: TokenToKVPool, cache):
        super().__init__()
        self.pool, self.cache = pool, cache
        self.locks = []  # (handle, prefix tuple) locked directly by the test
        self.reqs = []  # dicts: tokens, kv, handle, prefix_len (slots kv[prefix_len:] are the test's)

    def evict(self, n: int) -> None:
        raise NotImplementedError

    def alloc(self, n: int):
        """``n`` slots from the pool, evicting first when it is short; None if still short."""
        if self.pool.available_size() < n:
            self.evict(n - self.pool.available_size())
        return self.pool.alloc(n)

    def lock_match(self, m, tokens) -> None:
        """Lock match ``m`` of ``tokens`` and record it as one of the test's own locks."""
        self.cache.lock(m.handle)
        self.locks.append((m.handle, tuple(tokens[: m.prefix_len])))

    def add_req(self, tokens, m) -> None:
        """Start a request for ``tokens`` on the locked match ``m``: allocate the slots past the
        prefix (evicting if short); when the pool is still short, unlock ``m`` instead."""
        own = self.alloc(len(tokens) - m.prefix_len)
        if own is None:
            self.cache.unlock(m.handle)
            return
        self.reqs.append(dict(tokens=tokens, kv=torch.cat([m.kv_indices, own]), handle=m.handle,
                              prefix_len=m.prefix_len))

    def grow_req(self, r, more) -> None:
        """Append the next chunk ``more`` to request ``r`` when the pool has (or can evict) its slots."""
        own = self.alloc(len(more))
        if own is not None:
            r.update(tokens=r["tokens"] + more, kv=torch.cat([r["kv"], own]))

    def assert_slots_partitioned(self, cached_slots) -> None:
        """Free list + ``cached_slots`` + request-owned slots partition 1..POOL_SIZE exactly."""
        owned = self.pool.free_slots.tolist() + list(cached_slots)
        for r in self.reqs:
            owned += r["kv"][r["prefix_len"]:].tolist()
        assert sorted(owned) == list(range(1, POOL_SIZE + 1))

    @precondition(lambda self: self.locks)
    @rule(i=st.integers(0, 100))
    def unlock(self, i):
        handle, _ = self.locks.pop(i % len(self.locks))
        self.cache.unlock(handle)

    @rule(n=st.integers(0, POOL_SIZE))
    def evict_tokens(self, n):
        self.evict(n)

    def teardown(self):
        for handle, _ in self.locks:
            self.cache.unlock(handle)
        for r in self.reqs:
            self.cache.cache_finished_req(r["tokens"], r["kv"], r["handle"], r["prefix_len"])
        self.cache.check_integrity()
        self.cache.reset()
        assert self.pool.available_size() == POOL_SIZE
