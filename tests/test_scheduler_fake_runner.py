"""Scheduler unit tests with a fake runner: exact batches per step, in milliseconds, without a model.

The :class:`FakeRunner` owns real KV pools (1 layer, 1 KV head, head_dim 2) and is a tiny
"model": each new token writes ``(token id, position)`` as its K/V at its ``out_cache_loc``
slot, and each requested logits row reads the request's *whole* history back from the pool
through its ``req_to_token`` row (checking that positions ``0..p`` are all there, in order)
and emits one-hot logits for ``script(history)``. So greedy decoding produces
:func:`next_token` of the full token sequence, and any KV bookkeeping error (a wrong prefix
match, a lost chunk, a bad resume after retraction, a stale row) changes the output or
trips an assertion. Every batch the scheduler hands over is recorded (:class:`Call`).

The tests drive ``Scheduler.step()`` by hand and assert the exact composition of every step
(forward mode, requests, extend/prefix/seq lengths, rows, slots, logits rows), derived from
the rules in sgl/engine/scheduler.py and sgl/engine/prefill.py (quoted next to each test).
The real-model tests in tests/test_scheduler.py stay.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, fields
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import pytest
import torch

from sgl.core.config import SchedulerConfig
from sgl.engine.cache import make_cache_manager
from sgl.engine.io import OutputSink
from sgl.engine.jump_forward import JumpForward
from sgl.engine.output_processor import OutputProcessor
from sgl.engine.req import Req
from sgl.engine.request_builder import GenerateRequest, ModelInfo, RequestBuilder
from sgl.engine.sampling.sampler import Sampler
from sgl.engine.scheduler import Scheduler
from sgl.executor.forward_batch import ForwardMode
from sgl.executor.memory_pool import ReqToTokenPool, TokenToKVPool
from sgl.executor.model_worker_batch import ModelWorkerBatch

VOCAB = 64
EOS = 0
CONTEXT_LEN = 128
E, D = "extend", "decode"


def next_token(tokens: Sequence[int]) -> int:
    """The fake model: a token in [1, VOCAB) that depends on every token of the history."""
    return 1 + (7 * sum(tokens) + 3 * len(tokens)) % (VOCAB - 1)


def reference(prompt: Sequence[int], n: int, script: Callable[[Sequence[int]], int] = next_token) -> List[int]:
    """What greedy decoding of ``prompt`` for ``n`` tokens must return (stops after EOS)."""
    ids, out = list(prompt), []
    for _ in range(n):
        t = script(ids)
        out.append(t)
        ids.append(t)
        if t == EOS:
            break
    return out


class FakeTokenizer:
    """Token ``i`` decodes to ``<i>``; EOS is special (dropped with ``skip_special_tokens``)."""

    def decode(self, ids, skip_special_tokens: bool = True, **_):
        return "".join(f"<{int(i)}>" for i in ids if not (skip_special_tokens and int(i) == EOS))

    def encode(self, text, add_special_tokens: bool = False):  # jump-forward only; never forced here
        raise AssertionError("no grammar in these tests")


def text_of(ids: Sequence[int]) -> str:
    return FakeTokenizer().decode(ids)


@dataclass(frozen=True)
class Call:
    """One ``FakeRunner.forward`` call, as plain values (``rids``: who held each row then)."""
    mode: str
    rids: Tuple[str, ...]
    extend_lens: Tuple[int, ...]
    prefix_lens: Tuple[int, ...]
    seq_lens: Tuple[int, ...]
    req_pool_indices: Tuple[int, ...]
    out_cache_loc: Tuple[int, ...]
    logits_rows: Tuple[int, ...]
    input_ids: Tuple[int, ...]
    positions: Tuple[int, ...]
    mwb: ModelWorkerBatch

    @property
    def short(self):
        """``(mode, rids, extend_lens, prefix_lens)``: the batch composition."""
        return (self.mode, self.rids, self.extend_lens, self.prefix_lens)


class FakeRunner:
    """What the Scheduler needs of a runner: ``forward(ModelWorkerBatch) -> logits`` and the two pools."""

    def __init__(self, pool_size: int, rows: int, script: Callable[[Sequence[int]], int] = next_token,
                 row_owner: Callable[[int], str] = str):
        self.token_to_kv_pool = TokenToKVPool(pool_size, num_layers=1, num_kv_heads=1, head_dim=2)
        self.req_to_token_pool = ReqToTokenPool(rows, CONTEXT_LEN + 1)
        self.script = script
        self.row_owner = row_owner
        self.calls: List[Call] = []

    def forward(self, mwb: ModelWorkerBatch) -> torch.Tensor:
        assert isinstance(mwb, ModelWorkerBatch)
        loc, ids, pos = mwb.out_cache_loc, mwb.input_ids, mwb.positions
        assert loc.dtype == ids.dtype == pos.dtype == torch.int64
        assert bool((loc > 0).all()), "slot 0 is the padding slot"
        assert loc.unique().numel() == loc.numel(), "a slot written twice in one batch"
        starts, off = [], 0
        for p, ext, s in zip(mwb.prefix_lens, mwb.extend_lens, mwb.seq_lens):
            assert p + ext == s
            assert pos[off:off + ext].tolist() == list(range(p, s))
            starts.append(off)
            off += ext
        if mwb.forward_mode.is_decode():
            assert mwb.extend_lens == (1,) * mwb.batch_size
        self.calls.append(Call(
            mwb.forward_mode.value, tuple(self.row_owner(i) for i in mwb.req_pool_indices),
            mwb.extend_lens, mwb.prefix_lens, mwb.seq_lens, mwb.req_pool_indices, tuple(loc.tolist()),
            mwb.logits_rows, tuple(ids.tolist()), tuple(pos.tolist()), mwb))
        kv = torch.stack([ids, pos], dim=-1).float()[:, None, :]  # [n, 1 head, 2]
        self.token_to_kv_pool.set_kv(0, loc, kv, kv)
        k, _ = self.token_to_kv_pool.get_kv_buffer(0)
        logits = torch.zeros(len(mwb.logits_rows), VOCAB)
        for j, flat in enumerate(mwb.logits_rows):
            i = max(b for b in range(mwb.batch_size) if starts[b] <= flat)
            p = int(pos[flat])
            slots = self.req_to_token_pool.req_to_token[mwb.req_pool_indices[i], :p + 1]
            hist = k[slots, 0].long()
            assert hist[:, 1].tolist() == list(range(p + 1)), f"KV of positions 0..{p} is not in the row"
            logits[j, self.script(hist[:, 0].tolist())] = 1.0
        return logits


class RecordingScheduler(Scheduler):
    """The real Scheduler, noting which request each retraction picks (and at which step)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.step_no = 0
        self.retracted: List[Tuple[int, str]] = []

    def retract(self, r: Req) -> None:
        self.retracted.append((self.step_no, r.rid))
        super().retract(r)


class Harness:
    """Scheduler + FakeRunner + a real cache, OutputProcessor and RequestBuilder (as Engine wires them)."""

    def __init__(self, pool_size: int = 256, cache: str = "radix", page_size: Optional[int] = None,
                 script: Callable[[Sequence[int]], int] = next_token, **cfg):
        cfg.setdefault("policy", "fcfs")
        cfg.setdefault("log_interval", 0)
        cfg.setdefault("max_running_requests", 8)
        self.cfg = SchedulerConfig(**cfg)
        self.reqs: Dict[str, Req] = {}
        self.results: Dict[str, dict] = {}
        self.runner = FakeRunner(pool_size, self.cfg.max_running_requests, script, self._owner)
        kw = {} if page_size is None else {"page_size": page_size}
        self.cache = make_cache_manager(cache, self.runner.token_to_kv_pool, **kw)
        tok = FakeTokenizer()
        jf = JumpForward(tok, False)
        info = ModelInfo("fake", VOCAB, CONTEXT_LEN, pool_size, (EOS,))
        self.builder = RequestBuilder(info, tok, lambda: pytest.fail("no grammar backend"), jf)
        self.sched = RecordingScheduler(self.cfg, self.runner, self.cache,
                                        OutputProcessor(tok, (EOS,), Sampler(), jf))

    def _owner(self, row: int) -> str:
        (rid,) = [r.rid for r in self.reqs.values() if r.req_pool_idx == row]
        return rid

    def submit(self, rid: str, prompt: Sequence[int], max_new_tokens: int, **params) -> Req:
        """Build the request as Engine.generate does and queue it (admitted into ``waiting`` now)."""
        (r,), _ = self.builder.build(GenerateRequest(
            input_ids=list(prompt), rid=rid,
            sampling_params={"temperature": 0, "max_new_tokens": max_new_tokens, **params}))
        r.sink = OutputSink()
        self.reqs[rid] = r
        self.sched.add_request(r)
        self.sched._drain_inbox(block=False)
        return r

    def step(self) -> Optional[Call]:
        """One ``Scheduler.step()``; the batch it ran (None if it ran none)."""
        self.sched.step_no += 1
        n = len(self.runner.calls)
        assert self.sched.step(), "step() found nothing to do"
        assert len(self.runner.calls) - n <= 1
        return self.runner.calls[-1] if len(self.runner.calls) > n else None

    def steps(self, k: int) -> list:
        return [self.step() for _ in range(k)]

    def run(self, limit: int = 200) -> list:
        """Step until the scheduler has nothing left; every step's batch (None where it ran none)."""
        out = []
        while self.sched.num_unfinished():
            assert len(out) < limit
            out.append(self.step())
        assert not self.sched.step()
        return out

    def result(self, rid: str) -> dict:
        """The request's final output (what Engine.generate returns); asserts it finished."""
        if rid not in self.results:
            sink = self.reqs[rid].sink
            while True:
                out, final = sink.get(timeout=0)
                if final:
                    self.results[rid] = out
                    break
        return self.results[rid]

    def assert_idle_and_clean(self) -> None:
        self.sched.check_idle_integrity()
        pool = self.runner.token_to_kv_pool
        assert pool.available_size() + self.cache.total_size() == pool.size
        assert self.runner.req_to_token_pool.available_size() == self.cfg.max_running_requests


def short(calls) -> list:
    return [None if c is None else c.short for c in calls]


def prompt(n: int, start: int = 1) -> List[int]:
    return [1 + (start + i) % (VOCAB - 1) for i in range(n)]


# ---------------------------------------------------------------- batch composition per step

def test_batch_composition_extend_then_decode_and_finished_leave_at_their_step():
    h = Harness(pool_size=64, cache="none")
    pa, pb, pc = prompt(5, 1), prompt(3, 20), prompt(7, 40)
    h.submit("a", pa, 4)
    h.submit("b", pb, 2)
    h.submit("c", pc, 3)
    calls = h.run()
    assert len(calls) == 4
    e, d2, d3, d4 = calls
    # One EXTEND of the three prompts, in arrival order; rows pop from the end of the free list
    # (7, 6, 5), slots come from the front of the pool (1..15); each request samples its last token.
    assert e.mode == E and e.rids == ("a", "b", "c")
    assert (e.extend_lens, e.prefix_lens, e.seq_lens) == ((5, 3, 7), (0, 0, 0), (5, 3, 7))
    assert e.req_pool_indices == (7, 6, 5)
    assert e.out_cache_loc == tuple(range(1, 16))
    assert e.logits_rows == (4, 7, 14)
    assert e.input_ids == tuple(pa + pb + pc)
    assert e.positions == tuple(range(5)) + tuple(range(3)) + tuple(range(7))
    # DECODE steps: seq_lens + 1 per step; b (2 tokens) leaves after step 2, c (3) after step 3.
    ra, rb, rc = reference(pa, 4), reference(pb, 2), reference(pc, 3)
    assert (d2.mode, d2.rids, d2.seq_lens, d2.prefix_lens) == (D, ("a", "b", "c"), (6, 4, 8), (5, 3, 7))
    assert d2.input_ids == (ra[0], rb[0], rc[0]) and d2.positions == (5, 3, 7)
    assert d2.req_pool_indices == (7, 6, 5) and d2.out_cache_loc == (16, 17, 18) and d2.logits_rows == (0, 1, 2)
    assert (d3.mode, d3.rids, d3.seq_lens, d3.req_pool_indices) == (D, ("a", "c"), (7, 9), (7, 5))
    assert d3.input_ids == (ra[1], rc[1]) and d3.out_cache_loc == (19, 20) and d3.logits_rows == (0, 1)
    assert (d4.mode, d4.rids, d4.seq_lens, d4.input_ids) == (D, ("a",), (8,), (ra[2],))
    for rid, p, ref in (("a", pa, ra), ("b", pb, rb), ("c", pc, rc)):
        out = h.result(rid)
        assert out["output_ids"] == ref and out["text"] == text_of(ref)
        assert out["meta_info"]["finish_reason"] == {"type": "length", "length": len(ref)}
        assert out["meta_info"]["prompt_tokens"] == len(p)
    assert h.sched.stats.prefill_steps == 1 and h.sched.stats.decode_steps == 3
    h.assert_idle_and_clean()


def test_eos_finishes_request_at_the_exact_step():
    """The script emits EOS once the history is ``tokens[0]`` long: a = [8, ...3 tokens] ends with
    its 6th output (EOS) in step 6; b runs to max_new_tokens=8 alone from step 7."""
    def script(tokens):
        return EOS if len(tokens) == tokens[0] else next_token(tokens)

    h = Harness(pool_size=64, cache="radix", script=script)
    pa, pb = [8, 1, 2], [60, 5, 5, 5]
    h.submit("a", pa, 10)
    h.submit("b", pb, 8)
    calls = h.run()
    assert short(calls) == [(E, ("a", "b"), (3, 4), (0, 0))] + \
        [(D, ("a", "b"), (1, 1), (3 + i, 4 + i)) for i in range(5)] + \
        [(D, ("b",), (1,), (9 + i,)) for i in range(2)]
    ra = h.result("a")
    assert ra["output_ids"] == reference(pa, 10, script) and ra["output_ids"][-1] == EOS
    assert len(ra["output_ids"]) == 6
    assert ra["meta_info"]["finish_reason"] == {"type": "stop", "matched": EOS}
    assert ra["text"] == text_of(ra["output_ids"][:-1])
    assert h.result("b")["output_ids"] == reference(pb, 8, script)
    h.assert_idle_and_clean()


def test_max_new_tokens_zero_is_prefill_only():
    h = Harness(pool_size=32)
    h.submit("a", prompt(4), 0)
    h.submit("b", prompt(3, 9), 1)
    calls = h.run()
    assert short(calls) == [(E, ("a", "b"), (4, 3), (0, 0))]
    assert calls[0].logits_rows == (3, 6)
    assert h.result("a")["output_ids"] == [] and h.result("a")["meta_info"]["finish_reason"]["type"] == "length"
    assert h.result("b")["output_ids"] == reference(prompt(3, 9), 1)
    h.assert_idle_and_clean()


# ---------------------------------------------------------------- chunked prefill

@pytest.mark.parametrize("cache,page_size", [("radix", None), ("none", None), ("lru", 4)])
@pytest.mark.parametrize("chunk,length,expected", [
    (4, 10, [4, 4, 2]),
    (4, 8, [4, 4]),
    (5, 3, [3]),
    (3, 10, [3, 3, 3, 1]),
])
def test_chunked_prefill_chunk_boundaries(cache, page_size, chunk, length, expected):
    """chunked_prefill_size=C: extends of exactly C tokens at prefixes 0, C, 2C, ..., then the
    remainder; only the last chunk has a logits row (its last token), then decode."""
    h = Harness(pool_size=64, cache=cache, page_size=page_size, chunked_prefill_size=chunk)
    p = prompt(length, 3)
    h.submit("a", p, 3)
    calls = h.run()
    n = len(expected)
    prefixes = [sum(expected[:i]) for i in range(n)]
    assert short(calls) == [(E, ("a",), (c,), (pre,)) for c, pre in zip(expected, prefixes)] + \
        [(D, ("a",), (1,), (length,)), (D, ("a",), (1,), (length + 1,))]
    assert [c.logits_rows for c in calls[:n]] == [()] * (n - 1) + [(expected[-1] - 1,)]
    assert [c.input_ids for c in calls[:n]] == [tuple(p[pre:pre + c]) for c, pre in zip(expected, prefixes)]
    assert len({c.req_pool_indices for c in calls}) == 1  # the row is kept across chunks
    assert h.result("a")["output_ids"] == reference(p, 3)
    assert h.result("a")["meta_info"]["cached_tokens"] == 0
    h.assert_idle_and_clean()


def test_one_chunked_prefill_at_a_time_and_who_joins_it():
    """A second long prompt may not start chunking while one chunks ("one chunked prefill at a time"),
    and the short request behind it waits too (admission stops at the first request that does not
    fit); a request that fits whole joins a chunk. Extends go first: r1 does not decode until r2's
    prefill is done."""
    h = Harness(pool_size=128, chunked_prefill_size=4)
    p1, p2, p3 = prompt(10, 1), prompt(9, 30), prompt(3, 50)
    h.submit("r1", p1, 2)
    h.submit("r2", p2, 2)
    h.submit("r3", p3, 2)
    calls = h.run()
    assert short(calls) == [
        (E, ("r1",), (4,), (0,)),
        (E, ("r1",), (4,), (4,)),
        (E, ("r1",), (2,), (8,)),
        (E, ("r2", "r3"), (4, 3), (0, 0)),
        (E, ("r2",), (4,), (4,)),
        (E, ("r2",), (1,), (8,)),
        (D, ("r1", "r3", "r2"), (1, 1, 1), (10, 3, 9)),
    ]
    assert calls[3].logits_rows == (6,)  # r3's last token; r2's chunk samples nothing
    for rid, p in (("r1", p1), ("r2", p2), ("r3", p3)):
        assert h.result(rid)["output_ids"] == reference(p, 2)
    h.assert_idle_and_clean()


# ---------------------------------------------------------------- admission

@pytest.mark.parametrize("lens,expected", [
    # budget 10: a(4) b(4) leave 2; c would get a 2-token chunk next to others ("no tiny chunks"): waits
    ([4, 4, 4, 3], [[0, 1], [2, 3]]),
    # c fits the 2 tokens left exactly; d finds the budget spent
    ([4, 4, 2, 3], [[0, 1, 2], [3]]),
    # all fit: 3 + 3 + 4 = 10
    ([3, 3, 4], [[0, 1, 2]]),
])
def test_admission_under_the_prefill_token_budget(lens, expected):
    h = Harness(pool_size=128, max_prefill_tokens=10, chunked_prefill_size=0)
    names = "abcd"[:len(lens)]
    for i, (rid, n) in enumerate(zip(names, lens)):
        h.submit(rid, prompt(n, 10 * i), 2)
    calls = h.run()
    extends = [c for c in calls if c.mode == E]
    assert [c.rids for c in extends] == [tuple(names[i] for i in step) for step in expected]
    assert [c.extend_lens for c in extends] == [tuple(lens[i] for i in step) for step in expected]
    assert [c.mode for c in calls[:len(expected)]] == [E] * len(expected)  # all extends come first
    assert short(calls[len(expected):]) == [
        (D, tuple(names), (1,) * len(lens), tuple(lens)),
        # everyone has max_new_tokens=2: one decode finishes them all
    ]
    for i, (rid, n) in enumerate(zip(names, lens)):
        assert h.result(rid)["output_ids"] == reference(prompt(n, 10 * i), 2)
    h.assert_idle_and_clean()


def test_prompt_longer_than_the_budget_is_split_into_budget_chunks():
    """Without chunked prefill, max_prefill_tokens still caps an extend: a 25-token prompt under a
    10-token budget runs as 10 + 10 + 5; a request queued behind it waits for the last chunk."""
    h = Harness(pool_size=128, max_prefill_tokens=10, chunked_prefill_size=0)
    pa, pb = prompt(25, 1), prompt(3, 40)
    h.submit("a", pa, 2)
    h.submit("b", pb, 2)
    calls = h.run()
    assert short(calls) == [
        (E, ("a",), (10,), (0,)),
        (E, ("a",), (10,), (10,)),
        (E, ("a", "b"), (5, 3), (20, 0)),
        (D, ("a", "b"), (1, 1), (25, 3)),
    ]
    assert calls[2].logits_rows == (4, 7)
    assert h.result("a")["output_ids"] == reference(pa, 2)
    h.assert_idle_and_clean()


def test_admission_under_max_running_requests():
    """max_running_requests=2: c is admitted in the step right after a finishes, into a's row."""
    h = Harness(pool_size=64, max_running_requests=2)
    pa, pb, pc = prompt(3, 1), prompt(4, 10), prompt(2, 20)
    h.submit("a", pa, 2)
    h.submit("b", pb, 5)
    h.submit("c", pc, 2)
    calls = h.run()
    assert short(calls) == [
        (E, ("a", "b"), (3, 4), (0, 0)),
        (D, ("a", "b"), (1, 1), (3, 4)),  # a's 2nd token: a finishes
        (E, ("c",), (2,), (0,)),
        (D, ("b", "c"), (1, 1), (5, 2)),  # c's 2nd token: c finishes
        (D, ("b",), (1,), (6,)),
        (D, ("b",), (1,), (7,)),
    ]
    assert calls[0].req_pool_indices == (1, 0) and calls[2].req_pool_indices == (1,)
    for rid, p, n in (("a", pa, 2), ("b", pb, 5), ("c", pc, 2)):
        assert h.result(rid)["output_ids"] == reference(p, n)
    h.assert_idle_and_clean()


@pytest.mark.parametrize("ratio,expected", [
    # ratio 0.5 (no decay): step 1 admits a (alone: no reserve; then reserves int(2*.5)=1) and b
    # (4 + int(20*.5)=10 <= 26 free - 1); c (4 + 10) > 22 free - 11 reserved. Step 2: reserve
    # int(19*.5)=9 for b, room 22 - 9 = 13 < 14: decode. a finishes there (its 5 tokens become
    # evictable cache), so step 3: room 20 free + 5 evictable - 9 = 16 >= 14: c is admitted.
    (0.5, [(E, ("a", "b"), (4, 4), (0, 0)), (D, ("a", "b"), (1, 1), (4, 4)), (E, ("c",), (4,), (0,))]),
    (0.0, [(E, ("a", "b", "c"), (4, 4, 4), (0, 0, 0)), (D, ("a", "b", "c"), (1, 1, 1), (4, 4, 4))]),
])
def test_admission_reserves_decode_room_for_running_requests(ratio, expected):
    h = Harness(pool_size=30, init_new_token_ratio=ratio, min_new_token_ratio=ratio, new_token_ratio_decay=0.0)
    h.submit("a", prompt(4, 1), 2)
    h.submit("b", prompt(4, 10), 20)
    h.submit("c", prompt(4, 20), 20)
    assert short(h.steps(len(expected))) == expected


# ---------------------------------------------------------------- retraction

def test_retraction_picks_longest_prompt_among_fewest_outputs_and_the_request_resumes():
    """Pool of 16, a(3) b(5) c(4) prompts: after step 2 one slot is free for three decodes. All have
    2 outputs, so the longest prompt, b, is retracted (its 6 slots freed, cache=none) and re-queued
    at the front; a and c decode on. b's 7 tokens do not fit until a and c finish; then b re-runs
    its prompt and its 2 outputs in one extend and finishes with its full output."""
    h = Harness(pool_size=16, cache="none", init_new_token_ratio=0.0, min_new_token_ratio=0.0)
    pa, pb, pc = prompt(3, 1), prompt(5, 10), prompt(4, 20)
    h.submit("a", pa, 4)
    h.submit("b", pb, 4)
    h.submit("c", pc, 4)
    calls = h.run()
    assert h.sched.retracted == [(3, "b")]
    assert short(calls) == [
        (E, ("a", "b", "c"), (3, 5, 4), (0, 0, 0)),
        (D, ("a", "b", "c"), (1, 1, 1), (3, 5, 4)),
        (D, ("a", "c"), (1, 1), (4, 5)),  # b retracted in this step
        (D, ("a", "c"), (1, 1), (5, 6)),  # b (7 tokens) > 5 free: a and c finish
        (E, ("b",), (7,), (0,)),
        (D, ("b",), (1,), (7,)),
    ]
    rb = reference(pb, 4)
    assert calls[4].input_ids == tuple(pb + rb[:2])  # the prompt and its outputs so far
    out = h.result("b")
    assert out["output_ids"] == rb and out["text"] == text_of(rb)
    assert out["meta_info"]["finish_reason"] == {"type": "length", "length": 4}
    assert h.reqs["b"].num_retractions == 1 and h.sched.stats.num_retractions == 1
    assert h.result("a")["output_ids"] == reference(pa, 4)
    assert h.result("c")["output_ids"] == reference(pc, 4)
    assert h.sched.stats.num_requests == 3  # a re-admission is not a new request
    h.assert_idle_and_clean()


@pytest.mark.parametrize("cache,resume", [
    ("none", (E, ("b",), (4,), (0,))),
    # radix: b's retracted KV (2 prompt + 1 output token) stays cached; the resume extends 1 token
    ("radix", (E, ("b",), (1,), (3,))),
])
def test_retraction_picks_fewest_outputs_first_even_with_a_shorter_prompt(cache, resume):
    """a(6) has decoded twice when b(2) arrives; in step 5 the 12-slot pool has 1 free slot for two
    decodes: b has fewer outputs (2 < 3), so b goes although its prompt is shorter."""
    h = Harness(pool_size=12, cache=cache, init_new_token_ratio=0.0, min_new_token_ratio=0.0)
    pa, pb = prompt(6, 1), prompt(2, 30)
    h.submit("a", pa, 4)
    calls = h.steps(2)
    h.submit("b", pb, 4)
    calls += h.run()
    assert h.sched.retracted == [(5, "b")]
    assert short(calls) == [
        (E, ("a",), (6,), (0,)),
        (D, ("a",), (1,), (6,)),
        (E, ("b",), (2,), (0,)),
        (D, ("a", "b"), (1, 1), (7, 2)),
        (D, ("a",), (1,), (8,)),  # b retracted; a's 4th token: a finishes
        resume,
        (D, ("b",), (1,), (4,)),
    ]
    assert h.result("a")["output_ids"] == reference(pa, 4)
    assert h.result("b")["output_ids"] == reference(pb, 4)
    h.assert_idle_and_clean()


def test_single_request_that_outgrows_the_pool_is_aborted():
    h = Harness(pool_size=8)
    p = prompt(4)
    h.submit("a", p, 10)
    calls = h.run()
    # 4 prompt slots + 4 decode slots fill the pool; the 6th step finds no slot and nothing to retract
    assert short(calls) == [(E, ("a",), (4,), (0,))] + [(D, ("a",), (1,), (4 + i,)) for i in range(4)] + [None]
    out = h.result("a")
    assert out["output_ids"] == reference(p, 5)
    assert out["meta_info"]["finish_reason"]["type"] == "abort"
    assert "max_total_tokens" in out["meta_info"]["finish_reason"]["message"]
    assert h.sched.retracted == []
    h.assert_idle_and_clean()


@pytest.mark.parametrize("cache", ["radix", "none"])
def test_running_request_is_not_aborted_while_a_pending_chunked_prefill_holds_kv(cache):
    """r1 needs 2 + 10 - 1 = 11 of the 20 slots, r2 needs 19: each fits the pool alone. r2's chunks
    (4, 4, 4, 4: pending requests ignore the decode reserve) leave r1 too few slots to decode, and
    r1, the only *running* request, would have no slot; the scheduler re-queues r2 (its KV goes to
    the cache) instead of aborting r1 (which it did, "KV cache pool (20 tokens) is too small for
    this request (5 tokens)"), and both finish."""
    h = Harness(pool_size=20, cache=cache, chunked_prefill_size=4)
    p1, p2 = prompt(2, 1), prompt(19, 30)
    h.submit("r1", p1, 10)
    h.step()
    h.submit("r2", p2, 1)
    h.run()
    h.assert_idle_and_clean()
    assert h.result("r2")["output_ids"] == reference(p2, 1)
    assert h.result("r1")["meta_info"]["finish_reason"] == {"type": "length", "length": 10}
    assert h.result("r1")["output_ids"] == reference(p1, 10)


# ---------------------------------------------------------------- prefix reuse

SHARED = prompt(6, 5)


@pytest.mark.parametrize("cache,page_size,cached", [
    ("radix", None, 6),  # token-granular: the exact shared length
    ("lru", 4, 4),  # whole pages only: A's prompt (10 tokens) cached 2 pages, B shares page 0
    ("lru", 2, 6),
    ("none", None, 0),
])
def test_second_request_extends_only_past_the_shared_prefix(cache, page_size, cached):
    h = Harness(pool_size=64, cache=cache, page_size=page_size)
    pa, pb = SHARED + [50, 51, 52, 53], SHARED + [60, 61, 62]
    h.submit("A", pa, 3)
    first = h.step()
    h.submit("B", pb, 3)
    calls = [first] + h.run()
    assert short(calls) == [
        (E, ("A",), (10,), (0,)),
        (E, ("B",), (9 - cached,), (cached,)),
        (D, ("A", "B"), (1, 1), (10, 9)),
        (D, ("A", "B"), (1, 1), (11, 10)),
    ]
    assert calls[1].input_ids == tuple(pb[cached:])
    assert calls[1].positions == tuple(range(cached, 9))
    assert h.result("B")["meta_info"]["cached_tokens"] == cached
    assert h.result("A")["output_ids"] == reference(pa, 3)
    assert h.result("B")["output_ids"] == reference(pb, 3)
    h.assert_idle_and_clean()


def test_identical_prompt_still_extends_its_last_token():
    """A fully cached prompt matches all but its last token (one token must run to give logits)."""
    h = Harness(pool_size=64)
    p = prompt(8, 2)
    h.submit("A", p, 2)
    h.run()
    h.submit("B", p, 2)
    calls = h.run()
    assert short(calls) == [(E, ("B",), (1,), (7,)), (D, ("B",), (1,), (8,))]
    assert h.result("B")["output_ids"] == h.result("A")["output_ids"] == reference(p, 2)
    assert h.result("B")["meta_info"]["cached_tokens"] == 7
    h.assert_idle_and_clean()


def test_in_batch_prefix_sharing_defers_the_second_request_one_step():
    """A and B arrive together sharing 40 tokens (>= IN_BATCH_PREFIX_THRESHOLD = 32): B waits one
    step, then hits A's cached prompt; C shares nothing and joins A's batch."""
    h = Harness(pool_size=256)
    shared = prompt(40, 7)
    pa, pb, pc = shared + [1, 2, 3, 4, 5], shared + [9, 9, 9], prompt(6, 50)
    h.submit("A", pa, 2)
    h.submit("B", pb, 2)
    h.submit("C", pc, 2)
    calls = h.run()
    assert short(calls) == [
        (E, ("A", "C"), (45, 6), (0, 0)),
        (E, ("B",), (3,), (40,)),
        (D, ("A", "C", "B"), (1, 1, 1), (45, 6, 43)),
    ]
    for rid, p in (("A", pa), ("B", pb), ("C", pc)):
        assert h.result(rid)["output_ids"] == reference(p, 2)
    h.assert_idle_and_clean()


@pytest.mark.parametrize("policy,expected", [
    # lpm: B (6 cached tokens) goes first and extends 3; X's 8 tokens do not fit the 5 left
    ("lpm", [(E, ("B",), (3,), (6,)), (E, ("X",), (8,), (0,))]),
    # fcfs: X arrived first and spends the whole budget; B waits a step
    ("fcfs", [(E, ("X",), (8,), (0,)), (E, ("B",), (3,), (6,))]),
])
def test_policy_decides_who_gets_the_budget(policy, expected):
    h = Harness(pool_size=64, policy=policy, max_prefill_tokens=8, chunked_prefill_size=0)
    h.submit("A", SHARED + [50, 51], 1)
    h.run()
    h.submit("X", prompt(8, 30), 1)
    h.submit("B", SHARED + [60, 61, 62], 1)
    assert short(h.run()) == expected
    h.assert_idle_and_clean()


# ---------------------------------------------------------------- the runner boundary

def test_model_worker_batches_are_picklable_and_carry_no_req():
    h = Harness(pool_size=64, chunked_prefill_size=4)
    h.submit("a", prompt(10), 3)
    h.submit("b", prompt(3, 30), 3)
    calls = h.run()
    assert {c.mode for c in calls} == {E, D}
    for c in calls:
        data = pickle.dumps(c.mwb)
        assert b"sgl.engine" not in data  # no Req, ScheduleBatch or cache object crosses the boundary
        back = pickle.loads(data)
        assert type(back) is ModelWorkerBatch
        for f in fields(ModelWorkerBatch):
            x, y = getattr(c.mwb, f.name), getattr(back, f.name)
            if isinstance(x, torch.Tensor):
                assert x.dtype == y.dtype and torch.equal(x, y), f.name
            else:
                assert x == y, f.name
        assert back.forward_mode is c.mwb.forward_mode
        assert isinstance(back.forward_mode, ForwardMode)


def test_failed_extend_aborts_its_requests_instead_of_losing_them():
    """An extend that raises takes its requests off every queue while it runs: they must still get a
    final abort (they used to be dropped, and their callers waited forever), and serving goes on."""
    h = Harness(pool_size=64, cache="radix")
    real = h.runner.forward

    def failing(batch):
        raise RuntimeError("injected extend failure")

    h.runner.forward = failing
    h.submit("a", prompt(5, 1), 3)
    with pytest.raises(RuntimeError, match="injected extend failure") as err:
        h.step()
    h.sched._recover(f"internal error: {err.value}")  # what Scheduler._loop does with a failed step
    assert h.result("a")["meta_info"]["finish_reason"]["type"] == "abort"
    assert "injected extend failure" in h.result("a")["meta_info"]["finish_reason"]["message"]
    h.runner.forward = real
    h.submit("b", prompt(5, 1), 3)
    h.run()
    assert h.result("b")["output_ids"] == reference(prompt(5, 1), 3)
    h.assert_idle_and_clean()
