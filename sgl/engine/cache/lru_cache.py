"""LRUCache: a page-granular prefix cache of chained-hash KV blocks (vLLM-style).

Algorithm from vLLM's automatic prefix caching (Kwon et al. 2023, "Efficient
Memory Management for Large Language Model Serving with PagedAttention", and
vLLM v1's ``KVCacheManager``/``BlockPool``): a token sequence is cut into full
pages of ``page_size`` tokens; page ``i`` is identified by the chained hash
``h_i = hash((h_{i-1}, tokens of page i))`` (``h_{-1} = None``), so a page's
identity depends on everything before it. A hash table maps ``h_i`` to a
:class:`Block` holding that page's ``page_size`` KV slots. Lookups walk the
pages in order and stop at the first miss; a trailing partial page is never
cached and never matches.

Choices (documented because they differ between implementations):

* Hash: Python's built-in ``hash`` of ``(parent_hash, tuple(tokens))`` (64-bit,
  process-local, deterministic for ints). Collisions are guarded against: each
  block also stores its ``parent_hash`` and its tokens, and a table entry
  counts as a hit only if both equal the looked-up page's. A page whose hash
  is taken by a different page (a collision) is not cached, and neither is any
  page after it in that sequence; lookups stop there too.
* Ownership of partial pages: :meth:`LRUCache.insert` takes ownership of
  ``kv_indices[already:]`` as the ABC says, keeps the full pages and frees the
  slots of the trailing partial page (and of any page after a collision) to
  the pool itself. :meth:`LRUCache.cache_unfinished_req` instead inserts only
  the full pages and leaves the partial page's slots with the running request;
  its returned match covers the full pages only.
* No orphans: every match/insert touches the whole walked chain with one
  clock value, so a block is never more recently used than its parent;
  eviction goes in LRU order with ties broken by the later page first (vLLM
  evicts a freed chain from its tail), hence children always leave before
  their parent and every cached block's parent is cached (checked by
  :meth:`LRUCache.check_integrity`). Locks ref-count every block of a matched
  chain, so a locked block's parent is locked as well.

* Handles: each block owns one :class:`LRUHandle` for its whole cached life,
  naming the chain that ends at it (walked through ``Block.parent``), so every
  match ending at the same last block returns the same handle object; an empty
  match returns the shared :data:`~sgl.engine.cache.base.EMPTY_HANDLE`. Since
  a block is cached only with its parent, the chain behind a cached block
  never changes. Eviction and reset drop the block's handle reference; a
  stale handle is refused by :meth:`LRUCache.lock`.

Access times come from a monotonic counter, not the wall clock, so eviction
order is deterministic; the final tie-break is block creation order.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from sgl.engine.cache.base import (EMPTY_HANDLE, CacheHandle, CacheManager, MatchResult, as_token_list,
                                   check_kv_indices)

HashFn = Callable[[Optional[int], Tuple[int, ...]], int]


def chain_hash(parent_hash: Optional[int], tokens: Tuple[int, ...]) -> int:
    """Hash of one full page given its parent page's hash (``None`` for the first page).

    Returns Python's ``hash((parent_hash, tokens))``: a 64-bit int, stable within
    one process (not across processes: ``hash(None)`` may differ before Python 3.12).
    """
    return hash((parent_hash, tokens))


class Block:
    """One cached full page.

    Attributes:
        block_hash: chained hash of the page (its key in the table).
        parent_hash: ``block_hash`` of the previous page, ``None`` for page 0.
        parent: the previous page's Block (``None`` for page 0), cached as long as this one is.
        tokens: the page's ``page_size`` token ids (collision guard).
        slots: int64 ``[page_size]`` pool slots holding the page's KV.
        page_idx: position of the page in its sequence (0-based).
        ref_count: number of locks held on chains through this block.
        last_access_time: counter value of the last match/insert touching it.
        id: creation order (eviction tie-break).
        handle: the block's one :class:`LRUHandle` (None once evicted or reset).
    """

    __slots__ = ("block_hash", "parent_hash", "parent", "tokens", "slots", "page_idx", "ref_count",
                 "last_access_time", "id", "handle")

    def __init__(self, block_hash: int, parent: Optional["Block"], tokens: Tuple[int, ...], slots: torch.Tensor,
                 page_idx: int, last_access_time: int, block_id: int):
        self.block_hash = block_hash
        self.parent = parent
        self.parent_hash = parent.block_hash if parent is not None else None
        self.tokens = tokens
        self.slots = slots
        self.page_idx = page_idx
        self.ref_count = 0
        self.last_access_time = last_access_time
        self.id = block_id
        self.handle: Optional[LRUHandle] = LRUHandle(self)

    def chain(self) -> Tuple["Block", ...]:
        """The blocks from page 0 up to and including this one."""
        out, b = [], self
        while b is not None:
            out.append(b)
            b = b.parent
        return tuple(reversed(out))

    def __repr__(self) -> str:
        return (f"Block(id={self.id}, page={self.page_idx}, slots={self.slots.tolist()}, "
                f"ref={self.ref_count}, t={self.last_access_time})")


@dataclass(frozen=True, eq=False)
class LRUHandle(CacheHandle):
    """:class:`CacheHandle` of a non-empty LRUCache match: the chain of blocks ending at ``block``.

    One per block (``block.handle``), so it compares and hashes by the last block's identity.

    Attributes:
        block: the last matched :class:`Block`.
    """

    block: Block

    @property
    def blocks(self) -> Tuple[Block, ...]:
        """The matched blocks, page 0 first (``len == prefix_len // page_size``)."""
        return self.block.chain()

    def __repr__(self) -> str:
        return f"LRUHandle({self.block!r})"


class LRUCache(CacheManager):
    """Page-granular chained-hash prefix cache with LRU block eviction. See :class:`CacheManager`.

    Handles are :class:`LRUHandle` (one per last matched block; ``EMPTY_HANDLE``
    for an empty match); all sizes are in tokens (a multiple of ``page_size``).

    Args:
        token_to_kv_pool: pool that evicted and uncached slots are freed to.
        page_size: tokens per block (>= 1).
        hash_fn: ``(parent_hash, page_tokens) -> int`` page hash; default :func:`chain_hash`
            (tests inject a colliding one).

    Raises:
        ValueError: if ``page_size`` is not a positive int.
    """

    def __init__(self, token_to_kv_pool, page_size: int = 16, hash_fn: HashFn = chain_hash):
        super().__init__(token_to_kv_pool)
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise ValueError(f"page_size must be a positive int, got {page_size!r}")
        self.page_size = page_size
        self._hash_fn = hash_fn
        self._ids = itertools.count()
        self._clock = itertools.count(1)
        self._blocks: Dict[int, Block] = {}

    def _pages(self, key: List[int]):
        """Yield ``(start, parent_hash, block_hash, page_tokens)`` for each full page of ``key``."""
        ps, parent = self.page_size, None
        for start in range(0, len(key) - ps + 1, ps):
            page = tuple(key[start : start + ps])
            h = self._hash_fn(parent, page)
            yield start, parent, h, page
            parent = h

    # ------------------------------------------------------------- match
    def match_prefix(self, token_ids: Sequence[int]) -> MatchResult:
        """Longest run of cached full pages from the start of ``token_ids`` (see base).

        Returns kv_indices int64 ``[k * page_size]`` and the last matched block's
        :class:`LRUHandle` (``EMPTY_HANDLE`` if ``k == 0``); marks the blocks most recently used.
        """
        key = as_token_list(token_ids)
        blocks = []
        for _, parent, h, page in self._pages(key):
            b = self._blocks.get(h)
            if b is None or b.parent_hash != parent or b.tokens != page:
                break
            blocks.append(b)
        now = next(self._clock)
        for b in blocks:
            b.last_access_time = now
        if not blocks:
            return MatchResult(kv_indices=self._empty(), handle=EMPTY_HANDLE)
        return MatchResult(kv_indices=torch.cat([b.slots for b in blocks]), handle=blocks[-1].handle)

    # ------------------------------------------------------------ insert
    def _insert_pages(self, key: List[int], kv_indices: torch.Tensor) -> Tuple[int, int]:
        """Cache the full pages of ``key``; return ``(already, cached)`` in tokens.

        ``already``: tokens of the leading run of pages cached before the call.
        ``cached``: tokens of the leading pages cached after it (all full pages
        unless a hash collision stopped it). Slots ``kv_indices[already:cached]``
        are now the cache's: kept for new pages, freed for a page found cached
        after a missing one (cannot happen without orphans; handled anyway).
        ``kv_indices[cached:]`` are left to the caller.
        """
        ps, now = self.page_size, next(self._clock)
        already, leading, cached, prev = 0, True, 0, None
        for start, parent, h, page in self._pages(key):
            b = self._blocks.get(h)
            if b is None:
                b = Block(h, prev, page, kv_indices[start : start + ps].clone(), start // ps, now, next(self._ids))
                self._blocks[h] = b
                self.evictable_size_ += ps
                leading = False
            elif b.parent_hash != parent or b.tokens != page:
                break  # hash collision with a different page: stop caching this sequence here
            elif leading:
                already = start + ps
            else:
                self.token_to_kv_pool.free(kv_indices[start : start + ps])
                b.parent = prev  # re-link to the parent block just (re)created under parent_hash
            b.last_access_time = now
            cached, prev = start + ps, b
        return already, cached

    def insert(self, token_ids: Sequence[int], kv_indices: torch.Tensor) -> int:
        """Cache the full pages of ``token_ids``; return the already-cached prefix length (see base).

        The cache takes ownership of ``kv_indices[already:]``: slots of new full
        pages are kept; slots of the trailing partial page (and of pages after a
        hash collision) are not cached and are freed to the pool here.
        """
        key = as_token_list(token_ids)
        check_kv_indices(kv_indices, len(key))
        already, cached = self._insert_pages(key, kv_indices)
        self.token_to_kv_pool.free(kv_indices[cached:])
        return already

    def _insert_unfinished(self, tokens: List[int], kv_indices: torch.Tensor) -> int:
        """Cache a running request's full pages only (see base ``cache_unfinished_req``): its
        partial page stays its own, so ``cache_unfinished_req`` returns a match whose
        ``prefix_len`` is ``len(token_ids)`` rounded down to a multiple of ``page_size`` (less
        after a hash collision), and the request keeps owning ``kv_indices[result.prefix_len:]``."""
        return self._insert_pages(tokens, kv_indices)[0]

    # -------------------------------------------------------------- locks
    def _check_handle(self, handle) -> Tuple[Block, ...]:
        """The blocks of ``handle`` (page 0 first; ``()`` for EMPTY_HANDLE).

        Raises ValueError if it is neither an LRUHandle nor EMPTY_HANDLE, RuntimeError if a block was evicted."""
        if handle is EMPTY_HANDLE:
            return ()
        if not isinstance(handle, LRUHandle):
            raise ValueError(f"handle must be an LRUHandle or EMPTY_HANDLE from match_prefix, "
                             f"got {type(handle).__name__}")
        blocks = handle.blocks
        for b in blocks:
            if self._blocks.get(b.block_hash) is not b:
                raise RuntimeError(f"handle block {b!r} was evicted or reset; match again before locking")
        return blocks

    def lock(self, handle: CacheHandle) -> None:
        """Increment ``ref_count`` of every block of ``handle`` (a no-op for ``EMPTY_HANDLE``)."""
        for b in self._check_handle(handle):
            if b.ref_count == 0:
                self.evictable_size_ -= self.page_size
                self.protected_size_ += self.page_size
            b.ref_count += 1

    def unlock(self, handle: CacheHandle) -> None:
        """Decrement ``ref_count`` of every block of ``handle``; RuntimeError if one is not locked."""
        blocks = self._check_handle(handle)
        for b in blocks:
            if b.ref_count <= 0:
                raise RuntimeError(f"unlock of an unlocked block {b!r}")
        for b in blocks:
            b.ref_count -= 1
            if b.ref_count == 0:
                self.evictable_size_ += self.page_size
                self.protected_size_ -= self.page_size

    # ----------------------------------------------------------- eviction
    def evict(self, num_tokens: int) -> int:
        """Free whole unlocked blocks, least recently used first (ties: later page first), until
        at least ``num_tokens`` slots are freed. Returns the slots freed (a multiple of page_size)."""
        if num_tokens < 0:
            raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
        heap = [(b.last_access_time, -b.page_idx, b.id, b) for b in self._blocks.values() if b.ref_count == 0]
        heapq.heapify(heap)
        freed, victims = 0, []
        while freed < num_tokens and heap:
            b = heapq.heappop(heap)[-1]
            del self._blocks[b.block_hash]
            b.handle = None
            victims.append(b.slots)
            freed += self.page_size
        self.evictable_size_ -= freed
        if victims:
            self.token_to_kv_pool.free(torch.cat(victims))
        return freed

    # -------------------------------------------------------------- sizes
    def num_blocks(self) -> int:
        """Number of cached blocks (``total_size() // page_size``)."""
        return len(self._blocks)

    def reset(self) -> None:
        """Free every cached slot to the pool and empty the table; RuntimeError if anything is locked."""
        self._check_unlocked()
        if self._blocks:
            self.token_to_kv_pool.free(torch.cat([b.slots for b in self._blocks.values()]))
        for b in self._blocks.values():
            b.handle = None
        self._blocks = {}
        self.evictable_size_ = 0

    # ---------------------------------------------------------- debugging
    def check_integrity(self, idle: bool = True) -> None:
        """Verify hashes, parent links, ref counts, LRU order, sizes and slot uniqueness (see base)."""
        ps = self.page_size
        evictable = protected = 0
        child_refs: Dict[int, int] = {}
        slots = []
        for h, b in self._blocks.items():
            assert b.block_hash == h, f"{b!r} is filed under hash {h} but has block_hash {b.block_hash}"
            assert len(b.tokens) == ps, f"{b!r} has {len(b.tokens)} tokens, page_size is {ps}"
            assert b.slots.dtype == torch.int64 and b.slots.shape == (ps,), f"{b!r} has slots of shape " \
                f"{tuple(b.slots.shape)} dtype {b.slots.dtype}"
            assert self._hash_fn(b.parent_hash, b.tokens) == h, f"{b!r}: its tokens do not hash to its key"
            assert b.ref_count >= 0, f"{b!r} has a negative ref_count"
            assert b.handle is not None and b.handle.block is b, f"{b!r} lost its handle"
            if b.parent_hash is None:
                assert b.parent is None, f"{b!r} has no parent hash but links to a parent block"
                assert b.page_idx == 0, f"{b!r} has no parent but is page {b.page_idx}"
            else:
                parent = self._blocks.get(b.parent_hash)
                assert parent is not None, f"{b!r} is an orphan: its parent block is not cached"
                assert b.parent is parent, f"{b!r} links to a parent block that is not the cached one"
                assert parent.page_idx == b.page_idx - 1, f"{b!r} follows page {parent.page_idx}"
                assert parent.last_access_time >= b.last_access_time, f"{b!r} was used after its parent {parent!r}"
                child_refs[b.parent_hash] = child_refs.get(b.parent_hash, 0) + b.ref_count
            if b.ref_count > 0:
                protected += ps
            else:
                evictable += ps
            slots.append(b.slots)
        for h, refs in child_refs.items():
            assert self._blocks[h].ref_count >= refs, f"{self._blocks[h]!r} has ref_count below its children's {refs}"
        assert evictable == self.evictable_size_, f"evictable_size_ {self.evictable_size_} != counted {evictable}"
        assert protected == self.protected_size_, f"protected_size_ {self.protected_size_} != counted {protected}"
        if idle:
            assert protected == 0, f"{protected} tokens still locked while idle"
        all_slots = torch.cat(slots).cpu() if slots else torch.empty(0, dtype=torch.int64)
        assert all_slots.unique().numel() == all_slots.numel(), "a KV slot is owned by two blocks"
        assert not bool((all_slots <= 0).any()), "the cache owns the padding slot 0 or a negative slot"
        free = getattr(self.token_to_kv_pool, "free_slots", None)
        if isinstance(free, torch.Tensor) and all_slots.numel():
            assert not bool(torch.isin(all_slots, free.cpu()).any()), "a cached slot is also in the pool's free list"
