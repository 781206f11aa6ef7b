"""SchedulePolicy: orders the waiting queue before each prefill batch is formed.

- ``lpm`` (longest prefix match first, SGLang paper, Zheng et al. 2023 §4):
  requests whose prompt shares the longest prefix with the radix cache run
  first, which keeps shared prefixes resident and raises the cache hit rate.
- ``fcfs``: arrival order.
- ``dfs-weight``: SGLang's DFS-weight ordering approximated by grouping
  requests on their matched cache node (the match's :class:`CacheHandle`,
  equal for matches ending at the same node) and ordering groups by size.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Dict, List

from sgl.engine.cache.base import CacheHandle, CacheManager
from sgl.engine.req import Req
from sgl.core.registry import Registry

SCHEDULE_POLICIES: Registry["SchedulePolicy"] = Registry("schedule policy")


def match_limit(req: Req) -> int:
    """How many leading tokens of ``req.fill_ids`` may come from the cache: at
    least one token must be extended (to produce logits), and prompt logprobs
    must be computed from ``logprob.start_len`` on."""
    limit = req.seq_len - 1
    if req.logprob.start_len is not None and not req.input_logprobs_done:
        limit = min(limit, max(req.logprob.start_len - 1, 0))
    return max(limit, 0)


class SchedulePolicy(ABC):
    """Orders ``waiting`` in place. May call ``cache.match_prefix`` to compute each
    request's ``prefix_indices``/``last_handle``; the scheduler re-matches at admission anyway."""

    @abstractmethod
    def sort(self, waiting: List[Req], cache: CacheManager) -> None:
        """Reorder ``waiting`` in place (the scheduler admits from the front). Locks nothing."""


@SCHEDULE_POLICIES.register("fcfs")
class FCFSPolicy(SchedulePolicy):
    """First come, first served (stable order of arrival)."""

    def sort(self, waiting: List[Req], cache: CacheManager) -> None:
        """Sort by ``created_time`` (stable: equal times keep their order); ``cache`` is unused."""
        waiting.sort(key=lambda r: r.created_time)


@SCHEDULE_POLICIES.register("lpm")
class LongestPrefixMatchPolicy(SchedulePolicy):
    """Longest cached prefix first; ties keep arrival order. With many waiting
    requests (> 128, as SGLang does) matching every one costs more than it gains,
    so it falls back to fcfs."""

    max_queue_for_matching = 128

    def sort(self, waiting: List[Req], cache: CacheManager) -> None:
        """Sort by matched prefix length (descending), then ``created_time``."""
        if len(waiting) > self.max_queue_for_matching:
            waiting.sort(key=lambda r: r.created_time)
            return
        lengths = {}
        for r in waiting:
            ids = r.fill_ids[: match_limit(r)]
            lengths[id(r)] = cache.match_prefix(ids).prefix_len
        waiting.sort(key=lambda r: (-lengths[id(r)], r.created_time))


@SCHEDULE_POLICIES.register("dfs-weight")
class DFSWeightPolicy(SchedulePolicy):
    """Groups requests by the cache node their prefix ends in; larger groups first, then arrival.

    Requests whose matches return equal :class:`CacheHandle` s (the same cached
    node; all empty matches share one) form a group. Groups are ordered by
    size (largest first), equal sizes by their earliest ``created_time``; each
    group is contiguous and in ``created_time`` order.
    """

    def sort(self, waiting: List[Req], cache: CacheManager) -> None:
        """Reorder ``waiting`` group by group as described above (one ``match_prefix`` per request)."""
        group_of: Dict[int, CacheHandle] = {}
        size: Dict[CacheHandle, int] = {}
        first: Dict[CacheHandle, tuple] = {}  # (earliest created_time, first position): a total group order
        for i, r in enumerate(waiting):
            h = cache.match_prefix(r.fill_ids[: match_limit(r)]).handle
            group_of[id(r)] = h
            size[h] = size.get(h, 0) + 1
            first[h] = min(first.get(h, (r.created_time, i)), (r.created_time, i))

        def key(r: Req) -> tuple:
            h = group_of[id(r)]
            return (-size[h], first[h], r.created_time)

        waiting.sort(key=key)


def make_schedule_policy(name: str) -> SchedulePolicy:
    """Build the policy registered as ``name`` (``fcfs``, ``lpm``, ``dfs-weight``).

    Raises:
        ValueError: for an unknown policy name (the message lists the known ones).
    """
    return SCHEDULE_POLICIES.get(name)()
