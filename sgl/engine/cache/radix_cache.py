"""RadixCache: a token-granular radix tree of cached KV slots (RadixAttention).

Algorithm from Zheng et al. 2023, "SGLang: Efficient Execution of Structured
Language Model Programs" (§3, RadixAttention), following the shape of
SGLang's and mini-sglang's ``radix_cache.py``: edges hold token runs and the
matching KV slots, children are keyed by their first token, a match that ends
inside an edge splits it, running requests lock their path with reference
counts, and eviction removes unlocked leaves in LRU order from a heap (a
parent whose last child goes becomes an evictable leaf itself).

Access times come from a monotonic counter, not the wall clock, so eviction
order is deterministic; ties break by node creation order.

Handles: each node owns one :class:`RadixHandle` for its whole cached life, so
every match ending at a node returns the same handle object (the root's for
an empty match). A split keeps the lower half in the old node (same handle,
same prefix) and gives the new upper node a new handle. Eviction and reset
detach the node (``parent = None``) and drop its handle reference, so a stale
handle is recognised and refused by :meth:`RadixCache.lock`.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch

from sgl.engine.cache.base import CacheHandle, CacheManager, MatchResult, as_token_list, check_kv_indices


class TreeNode:
    """One radix-tree edge: ``key`` tokens whose KV lives at ``value`` slots.

    Attributes:
        key: list of token ids (non-empty except at the root).
        value: int64 ``[len(key)]`` pool slots.
        children: first token of the child's key -> child.
        parent: None at the root and once the node was evicted.
        lock_ref: number of locks held on paths through this node.
        last_access_time: counter value of the last match/insert touching it.
        id: creation order (eviction tie-break).
        handle: the node's one :class:`RadixHandle` (None once evicted or reset).
    """

    __slots__ = ("key", "value", "children", "parent", "lock_ref", "last_access_time", "id", "handle")

    def __init__(self, key: List[int], value: torch.Tensor, parent: Optional["TreeNode"], node_id: int,
                 lock_ref: int = 0, last_access_time: int = 0):
        self.key = key
        self.value = value
        self.children: Dict[int, TreeNode] = {}
        self.parent = parent
        self.lock_ref = lock_ref
        self.last_access_time = last_access_time
        self.id = node_id
        self.handle: Optional[RadixHandle] = RadixHandle(self)

    def detach(self) -> None:
        """Mark the node as no longer cached (evicted or reset): unlink it and drop its handle."""
        self.parent = None
        self.handle = None

    def __repr__(self) -> str:
        return f"TreeNode(id={self.id}, key={self.key}, lock_ref={self.lock_ref}, t={self.last_access_time})"


@dataclass(frozen=True, eq=False)
class RadixHandle(CacheHandle):
    """:class:`CacheHandle` of a RadixCache match: the last matched node (the root for an empty match).

    One per node (``node.handle``), so it compares and hashes by the node's identity.

    Attributes:
        node: the :class:`TreeNode` the match ended at.
    """

    node: TreeNode

    def __repr__(self) -> str:
        return f"RadixHandle({self.node!r})"


def _common_prefix_len(a: List[int], b: List[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    i = 0
    while a[i] == b[i]:
        i += 1
    return i


class RadixCache(CacheManager):
    """Token-granular radix-tree prefix cache (page size 1). See :class:`CacheManager` for the contract.

    Args:
        token_to_kv_pool: pool that evicted slots are freed to.
    """

    def __init__(self, token_to_kv_pool):
        super().__init__(token_to_kv_pool)
        self._ids = itertools.count()
        self._clock = itertools.count(1)
        self.reset_tree()

    def reset_tree(self) -> None:
        """Start from an empty tree without freeing anything (use :meth:`reset` to free)."""
        self.root_node = TreeNode([], self._empty(), None, next(self._ids), lock_ref=1)
        self.evictable_size_ = 0
        self.protected_size_ = 0

    # ------------------------------------------------------------- match
    def match_prefix(self, token_ids: Sequence[int]) -> MatchResult:
        """Longest cached prefix; splits the last edge if the match ends inside it (see base)."""
        key = as_token_list(token_ids)
        now = next(self._clock)
        node, values, i = self.root_node, [], 0
        while i < len(key):
            child = node.children.get(key[i])
            if child is None:
                break
            n = _common_prefix_len(child.key, key[i : i + len(child.key)])
            if n < len(child.key):
                child = self._split(child, n)
            child.last_access_time = now
            values.append(child.value)
            node, i = child, i + n
        kv = torch.cat(values) if values else self._empty()
        return MatchResult(kv_indices=kv, handle=node.handle)

    def _split(self, child: TreeNode, n: int) -> TreeNode:
        """Split ``child`` after its first ``n`` tokens (0 < n < len(key)); return the new upper node."""
        parent = child.parent
        upper = TreeNode(child.key[:n], child.value[:n], parent, next(self._ids),
                         lock_ref=child.lock_ref, last_access_time=child.last_access_time)
        child.key, child.value = child.key[n:], child.value[n:]
        child.parent = upper
        upper.children[child.key[0]] = child
        parent.children[upper.key[0]] = upper
        return upper

    # ------------------------------------------------------------ insert
    def insert(self, token_ids: Sequence[int], kv_indices: torch.Tensor) -> int:
        """Insert ``token_ids`` with slots ``kv_indices``; return the already-cached prefix length (see base)."""
        key = as_token_list(token_ids)
        check_kv_indices(kv_indices, len(key))
        now = next(self._clock)
        node, i = self.root_node, 0
        while i < len(key):
            child = node.children.get(key[i])
            if child is None:
                new = TreeNode(key[i:], kv_indices[i:].clone(), node, next(self._ids), last_access_time=now)
                node.children[key[i]] = new
                self.evictable_size_ += len(new.key)
                return i
            n = _common_prefix_len(child.key, key[i : i + len(child.key)])
            if n < len(child.key):
                if i + n == len(key):  # the sequence ends inside this edge: nothing new to add
                    child.last_access_time = now
                    return len(key)
                child = self._split(child, n)
            child.last_access_time = now
            node, i = child, i + n
        return len(key)

    # -------------------------------------------------------------- locks
    def lock(self, handle: CacheHandle) -> None:
        """Increment ``lock_ref`` on every node from ``handle.node`` up to (excluding) the root.

        Raises ValueError for a non-:class:`RadixHandle`, RuntimeError for an evicted one."""
        node = self._check_handle(handle)
        while node is not self.root_node:
            if node.lock_ref == 0:
                self.evictable_size_ -= len(node.key)
                self.protected_size_ += len(node.key)
            node.lock_ref += 1
            node = node.parent

    def unlock(self, handle: CacheHandle) -> None:
        """Decrement ``lock_ref`` on the path; raises RuntimeError if ``handle`` is not locked."""
        node = self._check_handle(handle)
        if node is not self.root_node and node.lock_ref <= 0:
            raise RuntimeError(f"unlock of an unlocked node {node!r}")
        while node is not self.root_node:
            node.lock_ref -= 1
            if node.lock_ref == 0:
                self.evictable_size_ += len(node.key)
                self.protected_size_ -= len(node.key)
            node = node.parent

    def _check_handle(self, handle) -> TreeNode:
        """The node of ``handle``; ValueError if it is no RadixHandle, RuntimeError if evicted/reset."""
        if not isinstance(handle, RadixHandle):
            raise ValueError(f"handle must be a RadixHandle from match_prefix, got {type(handle).__name__}")
        node = handle.node
        if node is not self.root_node and node.parent is None:
            raise RuntimeError(f"handle {handle!r} was evicted or reset; match again before locking")
        return node

    # ----------------------------------------------------------- eviction
    def evict(self, num_tokens: int) -> int:
        """Free at least ``num_tokens`` slots by removing unlocked leaves, least recently used first."""
        if num_tokens < 0:
            raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
        heap = [(n.last_access_time, n.id, n) for n in self._nodes()
                if not n.children and n.lock_ref == 0]
        heapq.heapify(heap)
        freed, victims = 0, []
        while freed < num_tokens and heap:
            _, _, node = heapq.heappop(heap)
            parent = node.parent
            victims.append(node.value)
            freed += len(node.key)
            self.evictable_size_ -= len(node.key)
            del parent.children[node.key[0]]
            node.detach()
            if parent is not self.root_node and not parent.children and parent.lock_ref == 0:
                heapq.heappush(heap, (parent.last_access_time, parent.id, parent))
        if victims:
            self.token_to_kv_pool.free(torch.cat(victims))
        return freed

    # -------------------------------------------------------------- reset
    def reset(self) -> None:
        """Free every cached slot to the pool and empty the tree; RuntimeError if anything is locked."""
        self._check_unlocked()
        values = [n.value for n in self._nodes()]
        for n in self._nodes():
            n.detach()
        self.root_node.detach()
        if values:
            self.token_to_kv_pool.free(torch.cat(values))
        self.reset_tree()

    def _nodes(self) -> List[TreeNode]:
        """All non-root nodes, parents before children."""
        out, stack = [], list(self.root_node.children.values())
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(node.children.values())
        return out

    # ---------------------------------------------------------- debugging
    def check_integrity(self, idle: bool = True) -> None:
        """Verify links, ref counts, sizes and slot uniqueness (see base); AssertionError on failure."""
        root = self.root_node
        assert root.parent is None and root.lock_ref == 1 and not root.key, "root node was modified"
        assert root.handle is not None and root.handle.node is root, "root node lost its handle"
        evictable = protected = 0
        slots = []
        stack = [root]
        while stack:
            node = stack.pop()
            child_locks = 0
            for first, child in node.children.items():
                assert child.parent is node, f"{child!r} has a wrong parent link"
                assert child.key and child.key[0] == first, f"{child!r} is filed under first token {first}"
                assert child.value.numel() == len(child.key), f"{child!r} has {child.value.numel()} slots"
                assert child.handle is not None and child.handle.node is child, f"{child!r} lost its handle"
                assert child.lock_ref >= 0, f"{child!r} has a negative lock_ref"
                child_locks += child.lock_ref
                if child.lock_ref > 0:
                    protected += len(child.key)
                else:
                    evictable += len(child.key)
                slots.append(child.value)
                stack.append(child)
            if node is not root:
                assert node.lock_ref >= child_locks, f"{node!r} has lock_ref below its children's sum {child_locks}"
        assert evictable == self.evictable_size_, f"evictable_size_ {self.evictable_size_} != counted {evictable}"
        assert protected == self.protected_size_, f"protected_size_ {self.protected_size_} != counted {protected}"
        if idle:
            assert protected == 0, f"{protected} tokens still locked while idle"
        all_slots = torch.cat(slots).cpu() if slots else torch.empty(0, dtype=torch.int64)
        assert all_slots.unique().numel() == all_slots.numel(), "a KV slot is owned by two tree nodes"
        assert not bool((all_slots <= 0).any()), "the tree owns the padding slot 0 or a negative slot"
        free = getattr(self.token_to_kv_pool, "free_slots", None)
        if isinstance(free, torch.Tensor) and all_slots.numel():
            assert not bool(torch.isin(all_slots, free.cpu()).any()), "a tree slot is also in the pool's free list"

    def pretty_print(self) -> str:
        """Print and return the tree, one node per line: key, slots, lock_ref, access time."""
        lines = [f"root  evictable={self.evictable_size_} protected={self.protected_size_}"]
        stack = [(c, 1) for c in sorted(self.root_node.children.values(), key=lambda c: -c.key[0])]
        while stack:
            node, depth = stack.pop()
            lines.append(f"{'  ' * depth}{node.key} -> {node.value.tolist()} "
                         f"lock={node.lock_ref} t={node.last_access_time}")
            stack.extend((c, depth + 1) for c in sorted(node.children.values(), key=lambda c: -c.key[0]))
        text = "\n".join(lines)
        print(text)
        return text
