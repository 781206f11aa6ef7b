"""The CacheManager interface: prefix reuse of KV slots across requests.

A cache manager owns KV slots of a :class:`~sgl.executor.memory_pool.TokenToKVPool`
keyed by the token sequence that produced them, so a new request whose prompt
starts with a cached prefix can skip recomputing it (SGLang's RadixAttention,
Zheng et al. 2023, "SGLang: Efficient Execution of Structured Language Model
Programs", §3). The scheduler drives every implementation the same way:

1. ``m = cache.match_prefix(prompt)``; ``cache.lock(m.handle)`` while the
   request runs, so its prefix cannot be evicted; the request allocates slots
   only for ``prompt[m.prefix_len:]``. ``m.handle`` is a :class:`CacheHandle`
   naming the matched prefix by identity: matches that end at the same cached
   node (block) return the same handle, so handles can key dicts (the
   dfs-weight schedule policy groups waiting requests by them).
2. After a prefill chunk: ``m = cache.cache_unfinished_req(...)`` and rewrite
   the request's ``req_to_token`` row with ``m.kv_indices``.
3. When the request ends: ``cache.cache_finished_req(...)``.
4. When the pool runs short: ``cache.evict(n)``.

Slot ownership is the contract that matters: at any time each pool slot is
exactly one of free (in the pool), owned by the cache, or owned by one
request. The methods below say who owns what after each call.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Callable, Sequence

import torch


@dataclass(frozen=True, eq=False)
class CacheHandle:
    """Immutable, opaque name of one cached prefix, returned in :attr:`MatchResult.handle`.

    Identity semantics: handles compare and hash by object identity
    (``eq=False``), and every implementation returns the *same* handle object
    for every match that ends at the same cached node (radix tree node, LRU
    block) while that node stays cached. So ``m1.handle == m2.handle`` iff the
    two matches ended at the same node, and handles can be dict keys.

    A handle stays valid while it is locked (:meth:`CacheManager.lock`); an
    unlocked one may be invalidated by :meth:`CacheManager.evict` or
    :meth:`CacheManager.reset`, after which ``lock`` raises RuntimeError (match
    again instead). A handle belongs to the cache that made it.

    Implementations subclass it to carry their node (``RadixHandle.node``,
    ``LRUHandle.block``); the base class itself is used for :data:`EMPTY_HANDLE`.
    """


EMPTY_HANDLE = CacheHandle()
"""The shared handle of an empty match that names no cached node (NoneCache's
every match, LRUCache's empty matches); lock/unlock of it are no-ops."""


@dataclass(frozen=True, eq=False)
class MatchResult:
    """Result of :meth:`CacheManager.match_prefix`.

    Attributes:
        kv_indices: int64 ``[prefix_len]`` pool slots holding the KV of the
            matched prefix, position by position. They stay owned by the cache.
        handle: the :class:`CacheHandle` of the last matched node, for
            :meth:`CacheManager.lock` / :meth:`CacheManager.unlock` (equal for
            matches ending at the same node; see CacheHandle).
    """

    kv_indices: torch.Tensor
    handle: CacheHandle

    @property
    def prefix_len(self) -> int:
        """Number of matched tokens (``kv_indices.numel()``)."""
        return int(self.kv_indices.numel())


def as_token_list(token_ids: Sequence[int] | torch.Tensor, field: str = "token_ids") -> list:
    """Return ``token_ids`` (sequence of ints or 1-D integer tensor) as a list of Python ints.

    Raises:
        ValueError: if a tensor is not 1-D or not integer-typed.
    """
    if isinstance(token_ids, torch.Tensor):
        if token_ids.dim() != 1 or token_ids.is_floating_point():
            raise ValueError(f"{field} must be a 1-D integer tensor, got shape {tuple(token_ids.shape)} "
                             f"dtype {token_ids.dtype}")
        return token_ids.tolist()
    return [int(t) for t in token_ids]


def check_kv_indices(kv_indices: torch.Tensor, num_tokens: int, field: str = "kv_indices") -> None:
    """Validate that ``kv_indices`` is an int64 ``[num_tokens]`` tensor.

    Raises:
        ValueError: naming ``field`` on a wrong type, dtype, rank or length.
    """
    if not isinstance(kv_indices, torch.Tensor):
        raise ValueError(f"{field} must be a torch.Tensor, got {type(kv_indices).__name__}")
    if kv_indices.dtype != torch.int64 or kv_indices.dim() != 1:
        raise ValueError(f"{field} must be int64 1-D, got dtype {kv_indices.dtype} shape {tuple(kv_indices.shape)}")
    if kv_indices.numel() != num_tokens:
        raise ValueError(f"{field} has {kv_indices.numel()} slots but token_ids has {num_tokens} tokens")


class CacheManager(abc.ABC):
    """Abstract prefix cache over a TokenToKVPool (see the module docstring).

    Args:
        token_to_kv_pool: the pool the cached slots come from and are freed to
            (needs ``free(slots)``; ``device`` is used for empty results).
    """

    def __init__(self, token_to_kv_pool):
        self.token_to_kv_pool = token_to_kv_pool
        self.device = torch.device(getattr(token_to_kv_pool, "device", "cpu"))
        # Token counts behind evictable_size() / protected_size(); implementations keep them current.
        self.evictable_size_ = 0
        self.protected_size_ = 0

    def _empty(self) -> torch.Tensor:
        """An empty int64 slot tensor on the pool's device."""
        return torch.empty(0, dtype=torch.int64, device=self.device)

    # ------------------------------------------------------------ primitives
    @abc.abstractmethod
    def match_prefix(self, token_ids: Sequence[int]) -> MatchResult:
        """Find the longest cached prefix of ``token_ids`` (token-granular).

        Marks the matched path as most recently used. Does not lock anything
        and transfers no ownership: the returned slots stay the cache's, and
        are safe to use only after :meth:`lock` of ``handle`` (until unlock).
        An empty match returns int64 ``[0]`` kv_indices and a valid handle.

        Handle contract: two matches ending at the same cached node return the
        same :class:`CacheHandle` object (hence equal and equal-hashing), as
        long as that node was not evicted in between; matches ending at
        different nodes return different handles.
        """

    @abc.abstractmethod
    def insert(self, token_ids: Sequence[int], kv_indices: torch.Tensor) -> int:
        """Cache ``token_ids`` whose KV lives at ``kv_indices`` (int64 ``[len(token_ids)]``).

        Returns:
            ``already``: the length of the prefix of ``token_ids`` that was
            already cached before the call. The cache takes ownership of
            ``kv_indices[already:]`` (it copies the indices, so the caller may
            reuse the tensor). ``kv_indices[:already]`` are NOT taken: where
            they differ from the cache's own slots they are duplicates the
            caller still owns and must free.

        Raises:
            ValueError: if ``kv_indices`` is not int64 ``[len(token_ids)]``.
        """

    @abc.abstractmethod
    def lock(self, handle: CacheHandle) -> None:
        """Protect the path root..handle from eviction (ref-counted; nests).

        While locked, ``handle`` and every slot of its prefix stay valid.

        Raises:
            ValueError: if ``handle`` is not a handle of this cache's type.
            RuntimeError: if its node was evicted or reset (match again).
        """

    @abc.abstractmethod
    def unlock(self, handle: CacheHandle) -> None:
        """Undo one :meth:`lock` of ``handle``.

        Raises:
            ValueError: if ``handle`` is not a handle of this cache's type.
            RuntimeError: if ``handle`` is not locked.
        """

    @abc.abstractmethod
    def evict(self, num_tokens: int) -> int:
        """Free at least ``num_tokens`` cached slots back to the pool, least recently used first.

        Only unlocked entries are evicted. Returns the number of slots
        actually freed: it may exceed ``num_tokens`` (eviction granularity)
        or fall short of it (not enough evictable tokens).

        Raises:
            ValueError: if ``num_tokens < 0``.
        """

    def evictable_size(self) -> int:
        """Cached tokens not protected by any lock (could be evicted now)."""
        return self.evictable_size_

    def protected_size(self) -> int:
        """Cached tokens on some locked path (cannot be evicted now)."""
        return self.protected_size_

    def total_size(self) -> int:
        """All cached tokens (= slots owned by the cache)."""
        return self.evictable_size() + self.protected_size()

    @abc.abstractmethod
    def reset(self) -> None:
        """Drop every cached entry, freeing its slots to the pool.

        Raises:
            RuntimeError: if any entry is locked (requests still use it).
        """

    def _check_unlocked(self) -> None:
        """The :meth:`reset` precondition: RuntimeError if any cached token is locked."""
        if self.protected_size_ > 0:
            raise RuntimeError(f"cannot reset the cache: {self.protected_size_} tokens are locked by running requests")

    @abc.abstractmethod
    def check_integrity(self, idle: bool = True) -> None:
        """Verify internal consistency (sizes, ref counts, links, slot uniqueness).

        Args:
            idle: the engine has no running requests, so nothing may be locked
                (``protected_size() == 0``).

        Raises:
            AssertionError: with a message naming the first inconsistency.
        """

    # --------------------------------------------------- scheduler helpers
    def cache_finished_req(self, token_ids: Sequence[int], kv_indices: torch.Tensor,
                           handle: CacheHandle, prefix_len: int) -> None:
        """Hand a finished request's KV to the cache and release its lock.

        Args:
            token_ids: every token of the request that has KV (prompt + output,
                usually without the last sampled token, which has none).
            kv_indices: int64 ``[len(token_ids)]`` slots of those tokens: the
                first ``prefix_len`` are the cache's (the request's locked
                match), the rest are the request's own.
            handle: the handle the request locked (from its last match).
            prefix_len: length of that match.

        Afterwards the request owns no slots: new positions belong to the
        cache and duplicates (``kv_indices[prefix_len:already]``) are freed.
        """
        self._insert_request(token_ids, kv_indices, prefix_len, self.insert)
        self.unlock(handle)

    def cache_unfinished_req(self, token_ids: Sequence[int], kv_indices: torch.Tensor,
                             handle: CacheHandle, prefix_len: int) -> MatchResult:
        """Cache a running request's KV so far (e.g. after a prefill chunk) and re-lock it.

        Same arguments as :meth:`cache_finished_req`. Inserts, frees the
        duplicate slots ``kv_indices[prefix_len:already]``, matches
        ``token_ids`` again, locks the new handle and unlocks the old one.

        Returns:
            The new match (``prefix_len == len(token_ids)`` for a real cache):
            the caller must replace the request's slots by ``kv_indices`` of
            this result and keep its ``handle`` for the next call.
        """
        tokens = self._insert_request(token_ids, kv_indices, prefix_len, self._insert_unfinished)
        result = self.match_prefix(tokens)
        self.lock(result.handle)
        self.unlock(handle)
        return result

    def _insert_unfinished(self, tokens: list, kv_indices: torch.Tensor) -> int:
        """How :meth:`cache_unfinished_req` inserts a running request: :meth:`insert` (returns
        ``already``); a cache may override it to leave the request slots it does not cache."""
        return self.insert(tokens, kv_indices)

    def _insert_request(self, token_ids: Sequence[int], kv_indices: torch.Tensor, prefix_len: int,
                        insert: Callable[[list, torch.Tensor], int]) -> list:
        """Shared start of ``cache_*_req``: validate, ``already = insert(tokens, kv_indices)``,
        check the request's locked prefix is still cached, and free the duplicate slots
        ``kv_indices[prefix_len:already]``. Returns the tokens as a list.

        Raises:
            ValueError: bad ``kv_indices``. RuntimeError: the cached prefix shrank below ``prefix_len``.
        """
        tokens = as_token_list(token_ids)
        check_kv_indices(kv_indices, len(tokens))
        already = insert(tokens, kv_indices)
        if already < prefix_len:
            raise RuntimeError(f"cached prefix shrank from {prefix_len} to {already}: was the handle unlocked early?")
        self.token_to_kv_pool.free(kv_indices[prefix_len:already])
        return tokens
