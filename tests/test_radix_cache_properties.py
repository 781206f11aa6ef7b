"""RadixCache under random traffic (hypothesis): every match, insert, eviction
and request lifecycle is checked against a reference dict of cached prefixes,
and free + cached + request-owned slots always partition the pool."""

from __future__ import annotations

from cache_machine import CacheMachine, make_pool
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule

from sgl.engine.cache import RadixCache

token_seqs = st.lists(st.integers(0, 3), min_size=1, max_size=7)


class RadixCacheMachine(CacheMachine):
    """Random cache traffic against a reference dict: prefix tuple -> slot."""

    def __init__(self):
        pool = make_pool()
        super().__init__(pool, RadixCache(pool))
        self.ref = {}  # every cached prefix (a tuple) -> the slot of its last token

    def cached_len(self, tokens) -> int:
        n = 0
        while n < len(tokens) and tuple(tokens[: n + 1]) in self.ref:
            n += 1
        return n

    def expected_kv(self, tokens, n):
        return [self.ref[tuple(tokens[: i + 1])] for i in range(n)]

    def tree_dict(self):
        out, stack = {}, [((), self.cache.root_node)]
        while stack:
            prefix, node = stack.pop()
            for child in node.children.values():
                p = prefix
                for tok, slot in zip(child.key, child.value.tolist()):
                    p = p + (tok,)
                    out[p] = slot
                stack.append((p, child))
        return out

    def match(self, tokens):
        m = self.cache.match_prefix(tokens)
        n = self.cached_len(tokens)
        assert m.prefix_len == n and m.kv_indices.tolist() == self.expected_kv(tokens, n)
        return m

    def evict(self, n):
        before_avail, before_evictable = self.pool.available_size(), self.cache.evictable_size()
        freed = self.cache.evict(n)
        assert self.pool.available_size() == before_avail + freed
        assert freed >= min(n, before_evictable) and freed <= before_evictable
        tree = self.tree_dict()
        assert all(self.ref[p] == s for p, s in tree.items())
        assert len(self.ref) - len(tree) == freed
        self.ref = tree

    def record_insert(self, tokens, kv, prefix_len, call):
        already = self.cached_len(tokens)
        avail = self.pool.available_size()
        result = call()
        assert self.pool.available_size() == avail + (already - prefix_len)
        for i in range(already, len(tokens)):
            self.ref[tuple(tokens[: i + 1])] = int(kv[i])
        return result

    @rule(tokens=token_seqs)
    def insert(self, tokens):
        slots = self.alloc(len(tokens))
        if slots is None:
            return
        already = self.cached_len(tokens)
        assert self.cache.insert(tokens, slots) == already
        self.pool.free(slots[:already])
        for i in range(already, len(tokens)):
            self.ref[tuple(tokens[: i + 1])] = int(slots[i])

    @rule(tokens=token_seqs)
    def match_and_lock(self, tokens):
        self.lock_match(self.match(tokens), tokens)

    @rule(tokens=token_seqs)
    def start_req(self, tokens):
        m = self.match(tokens)
        self.cache.lock(m.handle)
        self.add_req(tokens, m)

    @precondition(lambda self: self.reqs)
    @rule(i=st.integers(0, 100), more=token_seqs)
    def chunk_req(self, i, more):
        r = self.reqs[i % len(self.reqs)]
        m = self.record_insert(r["tokens"], r["kv"], r["prefix_len"], lambda: self.cache.cache_unfinished_req(
            r["tokens"], r["kv"], r["handle"], r["prefix_len"]))
        assert m.prefix_len == len(r["tokens"]) and m.kv_indices.tolist() == self.expected_kv(r["tokens"], m.prefix_len)
        r.update(kv=m.kv_indices, handle=m.handle, prefix_len=m.prefix_len)
        self.grow_req(r, more)  # the next chunk's tokens

    @precondition(lambda self: self.reqs)
    @rule(i=st.integers(0, 100))
    def finish_req(self, i):
        r = self.reqs.pop(i % len(self.reqs))
        self.record_insert(r["tokens"], r["kv"], r["prefix_len"], lambda: self.cache.cache_finished_req(
            r["tokens"], r["kv"], r["handle"], r["prefix_len"]))

    @invariant()
    def consistent(self):
        idle = not self.locks and not self.reqs
        self.cache.check_integrity(idle=idle)
        assert self.tree_dict() == self.ref
        for _, prefix in self.locks:
            assert all(prefix[: i + 1] in self.ref for i in range(len(prefix)))
        self.assert_slots_partitioned(self.ref.values())
        assert self.cache.total_size() == len(self.ref)


RadixCacheMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None,
                                               suppress_health_check=[HealthCheck.too_slow])
TestRadixCacheProperties = RadixCacheMachine.TestCase
