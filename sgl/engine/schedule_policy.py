"""SchedulePolicy: orders the waiting queue before each prefill batch is formed.

- ``lpm`` (longest prefix match first, SGLang paper, Zheng et al. 2023 §4):
  requests whose prompt shares the longest prefix with the radix cache run
  first, which keeps shared prefixes resident and raises the cache hit rate.
- ``fcfs``: arrival order.
- ``dfs-weight``: SGLang's DFS-weight ordering approximated by grouping
  requests on their matched cache node and ordering groups by size.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import List

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
    def sort(self, waiting: List[Req], cache) -> None:
        ...


@SCHEDULE_POLICIES.register("fcfs")
class FCFSPolicy(SchedulePolicy):
    """First come, first served (stable order of arrival)."""

    def sort(self, waiting: List[Req], cache) -> None:
        waiting.sort(key=lambda r: r.created_time)


@SCHEDULE_POLICIES.register("lpm")
class LongestPrefixMatchPolicy(SchedulePolicy):
    """Longest cached prefix first; ties keep arrival order. With many waiting
    requests (> 128, as SGLang does) matching every one costs more than it gains,
    so it falls back to fcfs."""

    max_queue_for_matching = 128

    def sort(self, waiting: List[Req], cache) -> None:
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
    """Groups requests by the cache node their prefix ends in; larger groups first, then arrival."""

    def sort(self, waiting: List[Req], cache) -> None:
        handles = {}
        counts: dict = {}
        for r in waiting:
            h = cache.match_prefix(r.fill_ids[: match_limit(r)]).handle
            handles[id(r)] = id(h)
            counts[id(h)] = counts.get(id(h), 0) + 1
        waiting.sort(key=lambda r: (-counts[handles[id(r)]], handles[id(r)], r.created_time))


def make_schedule_policy(name: str) -> SchedulePolicy:
    """Raises ValueError for an unknown policy name."""
    return SCHEDULE_POLICIES.get(name)()
