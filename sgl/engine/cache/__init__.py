"""Prefix caches over the KV pool, picked by name (Hydra group ``cache``).

``CACHE_MANAGERS`` maps config names to factories ``(token_to_kv_pool, **kw) -> CacheManager``:
``radix`` (RadixCache, RadixAttention), ``lru`` (LRUCache, vLLM-style page-granular
chained-hash blocks) and ``none`` (NoneCache, no reuse). Every match carries a
:class:`CacheHandle` (identity semantics: equal iff the matches end at the same node).
Other implementations register themselves with ``@CACHE_MANAGERS.register(name)``.
"""

from __future__ import annotations

from sgl.engine.cache.base import EMPTY_HANDLE, CacheHandle, CacheManager, MatchResult
from sgl.engine.cache.lru_cache import LRUCache, LRUHandle
from sgl.engine.cache.none_cache import NoneCache
from sgl.engine.cache.radix_cache import RadixCache, RadixHandle
from sgl.core.registry import Registry

CACHE_MANAGERS: Registry[CacheManager] = Registry("cache manager")
CACHE_MANAGERS.register("radix")(RadixCache)
CACHE_MANAGERS.register("none")(NoneCache)
CACHE_MANAGERS.register("lru")(LRUCache)


def make_cache_manager(name: str, token_to_kv_pool, **kw) -> CacheManager:
    """Build the cache manager registered as ``name`` over ``token_to_kv_pool``.

    Raises:
        ValueError: on an unknown name (the message lists the known ones).
    """
    return CACHE_MANAGERS.get(name)(token_to_kv_pool, **kw)


__all__ = ["CACHE_MANAGERS", "EMPTY_HANDLE", "CacheHandle", "CacheManager", "LRUCache", "LRUHandle", "MatchResult",
           "NoneCache", "RadixCache", "RadixHandle", "make_cache_manager"]
