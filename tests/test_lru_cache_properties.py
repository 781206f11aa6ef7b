"""LRUCache under random traffic (hypothesis): matches, inserts, the exact
eviction order and request lifecycles are checked against a reference model of
cached pages, and free + cached + request-owned slots always partition the pool."""

from __future__ import annotations

import torch
from cache_machine import CacheMachine, make_pool
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule

from sgl.engine.cache import LRUCache

MPS = 2  # page size of the model-based test
token_seqs = st.lists(st.integers(0, 2), min_size=1, max_size=9)


class LRUCacheMachine(CacheMachine):
    """Random cache traffic against a reference model.

    ``ref`` maps every cached page prefix (a tuple of tokens ending at a page
    boundary) to ``[slots, last_access, depth]``; ``held`` lists the prefixes
    locked by the test or by running requests, so eviction order is predicted.
    """

    def __init__(self):
        pool = make_pool()
        super().__init__(pool, LRUCache(pool, page_size=MPS))
        self.ref = {}
        self.clock = 0

    def pages(self, tokens):
        return [tuple(tokens[: e]) for e in range(MPS, len(tokens) + 1, MPS)]

    def cached_len(self, tokens) -> int:
        n = 0
        for p in self.pages(tokens):
            if p not in self.ref:
                break
            n = len(p)
        return n

    def touch(self, prefixes):
        self.clock += 1
        for p in prefixes:
            self.ref[p][1] = self.clock

    def expected_kv(self, tokens, n):
        return [s for p in self.pages(tokens[:n]) for s in self.ref[p][0]]

    def held(self):
        return [p for _, p in self.locks] + [tuple(r["tokens"][: r["prefix_len"]]) for r in self.reqs]

    def match(self, tokens):
        m = self.cache.match_prefix(tokens)
        n = self.cached_len(tokens)
        assert m.prefix_len == n and m.kv_indices.tolist() == self.expected_kv(tokens, n)
        self.touch(self.pages(tokens[:n]))
        return m

    def evict(self, n):
        held = self.held()
        free = [p for p in self.ref if not any(h[: len(p)] == p for h in held if len(h) >= len(p))]
        order = sorted(free, key=lambda p: (self.ref[p][1], -self.ref[p][2]))
        victims, freed = [], 0
        for p in order:
            if freed >= n:
                break
            victims.append(p)
            freed += MPS
        before = self.pool.available_size()
        assert self.cache.evict(n) == freed
        assert self.pool.available_size() == before + freed
        expected = [s for p in victims for s in self.ref[p][0]]
        assert self.pool.free_slots[len(self.pool.free_slots) - freed:].tolist() == expected
        for p in victims:
            del self.ref[p]

    def record_insert(self, tokens, kv, prefix_len, call, frees_dups, frees_partial):
        """Run ``call`` (an insert of ``tokens``/``kv``) and update the model; check the slots it freed."""
        already, avail = self.cached_len(tokens), self.pool.available_size()
        full = len(tokens) // MPS * MPS
        result = call()
        expected_free = (already - prefix_len if frees_dups else 0) + (len(tokens) - full if frees_partial else 0)
        assert self.pool.available_size() == avail + expected_free
        for p in self.pages(tokens):
            if p not in self.ref:
                self.ref[p] = [kv[len(p) - MPS: len(p)].tolist(), 0, len(p) // MPS - 1]
        self.touch(self.pages(tokens))
        return already, result

    @rule(tokens=token_seqs)
    def insert(self, tokens):
        slots = self.alloc(len(tokens))
        if slots is None:
            return
        already, got = self.record_insert(tokens, slots, 0, lambda: self.cache.insert(tokens, slots), False, True)
        assert got == already
        self.pool.free(slots[:already])

    @rule(tokens=token_seqs)
    def match_and_lock(self, tokens):
        self.lock_match(self.match(tokens), tokens)

    @rule(tokens=token_seqs)
    def start_req(self, tokens):
        m = self.match(tokens[:-1])  # like the scheduler's match_limit: extend at least one token
        self.lock_match(m, tokens)  # recorded while allocating, so the model's eviction spares it
        self.add_req(tokens, m)
        self.locks.pop()

    @precondition(lambda self: self.reqs)
    @rule(i=st.integers(0, 100), more=token_seqs)
    def chunk_req(self, i, more):
        r = self.reqs[i % len(self.reqs)]
        _, m = self.record_insert(r["tokens"], r["kv"], r["prefix_len"], lambda: self.cache.cache_unfinished_req(
            r["tokens"], r["kv"], r["handle"], r["prefix_len"]), True, False)
        full = len(r["tokens"]) // MPS * MPS
        assert m.prefix_len == full and m.kv_indices.tolist() == self.expected_kv(r["tokens"], full)
        r.update(kv=torch.cat([m.kv_indices, r["kv"][full:]]), handle=m.handle, prefix_len=full)
        self.grow_req(r, more)  # the next chunk's tokens

    @precondition(lambda self: self.reqs)
    @rule(i=st.integers(0, 100))
    def finish_req(self, i):
        r = self.reqs.pop(i % len(self.reqs))
        self.record_insert(r["tokens"], r["kv"], r["prefix_len"], lambda: self.cache.cache_finished_req(
            r["tokens"], r["kv"], r["handle"], r["prefix_len"]), True, True)

    @invariant()
    def consistent(self):
        idle = not self.locks and not self.reqs
        self.cache.check_integrity(idle=idle)
        table = {}
        for b in self.cache._blocks.values():
            chain, node = [], b
            while node is not None:
                chain.append(node)
                node = self.cache._blocks.get(node.parent_hash) if node.parent_hash is not None else None
            prefix = tuple(t for blk in reversed(chain) for t in blk.tokens)
            table[prefix] = b.slots.tolist()
        assert table == {p: v[0] for p, v in self.ref.items()}
        self.assert_slots_partitioned(s for v in self.ref.values() for s in v[0])
        assert self.cache.total_size() == MPS * len(self.ref)
        held = self.held()
        locked = {p for p in self.ref if any(h[: len(p)] == p for h in held if len(h) >= len(p))}
        assert self.cache.protected_size() == MPS * len(locked)


LRUCacheMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None,
                                             suppress_health_check=[HealthCheck.too_slow])
TestLRUCacheProperties = LRUCacheMachine.TestCase
