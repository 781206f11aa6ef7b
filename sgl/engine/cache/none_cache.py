"""NoneCache: the "no prefix reuse" cache manager (baseline for ablations).

Nothing is ever cached: matches are empty, finished requests free all their
slots, and running requests keep theirs. It implements the same
:class:`CacheManager` contract as RadixCache so the scheduler needs no special
case.
"""

from __future__ import annotations

from typing import Sequence

import torch

from sgl.engine.cache.base import EMPTY_HANDLE, CacheHandle, CacheManager, MatchResult, as_token_list, check_kv_indices


class NoneCache(CacheManager):
    """A cache that stores nothing. Every handle is the shared ``EMPTY_HANDLE``; lock/unlock are no-ops.

    Args:
        token_to_kv_pool: pool that request slots are freed to.
    """

    def match_prefix(self, token_ids: Sequence[int]) -> MatchResult:
        """Always an empty match: int64 ``[0]`` kv_indices, handle ``EMPTY_HANDLE``."""
        as_token_list(token_ids)
        return MatchResult(kv_indices=self._empty(), handle=EMPTY_HANDLE)

    def insert(self, token_ids: Sequence[int], kv_indices: torch.Tensor) -> int:
        """Take ownership of all of ``kv_indices`` and free them at once; returns 0."""
        check_kv_indices(kv_indices, len(as_token_list(token_ids)))
        self.token_to_kv_pool.free(kv_indices)
        return 0

    def lock(self, handle: CacheHandle) -> None:
        """No-op (nothing is cached, so nothing can be evicted)."""

    def unlock(self, handle: CacheHandle) -> None:
        """No-op."""

    def evict(self, num_tokens: int) -> int:
        """Nothing to evict: returns 0. Raises ValueError if ``num_tokens < 0``."""
        if num_tokens < 0:
            raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
        return 0

    def reset(self) -> None:
        """Nothing to drop."""

    def check_integrity(self, idle: bool = True) -> None:
        """Always consistent (holds no state)."""

    def cache_finished_req(self, token_ids: Sequence[int], kv_indices: torch.Tensor,
                           handle: CacheHandle, prefix_len: int) -> None:
        """Free all of the request's slots (``kv_indices``, int64 ``[len(token_ids)]``)."""
        check_kv_indices(kv_indices, len(as_token_list(token_ids)))
        self.token_to_kv_pool.free(kv_indices)

    def cache_unfinished_req(self, token_ids: Sequence[int], kv_indices: torch.Tensor,
                             handle: CacheHandle, prefix_len: int) -> MatchResult:
        """Keep the request's slots: returns ``MatchResult(kv_indices, EMPTY_HANDLE)`` (prefix_len = all tokens)."""
        check_kv_indices(kv_indices, len(as_token_list(token_ids)))
        return MatchResult(kv_indices=kv_indices, handle=EMPTY_HANDLE)
