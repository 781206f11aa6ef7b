"""Scheduler behaviour on the bundled model: chunked prefill, retraction, cache on/off, lpm order."""

from __future__ import annotations

import pytest
import torch

import sgl
from sgl.engine.cache.radix_cache import RadixCache
from sgl.executor.memory_pool import TokenToKVPool
from sgl.engine.req import Req
from sgl.engine.sampling.sampling_params import SamplingParams
from sgl.engine.schedule_policy import make_schedule_policy

GREEDY = {"temperature": 0, "max_new_tokens": 16}


def _make_req(rid, ids, t):
    r = Req(rid=rid, input_ids=list(ids), sampling_params=SamplingParams())
    r.created_time = t
    return r


def test_lpm_orders_by_longest_prefix_then_arrival():
    pool = TokenToKVPool(64, 1, 1, 2)
    cache = RadixCache(pool)
    cache.insert([1, 2, 3, 4, 5, 6], pool.alloc(6))
    waiting = [_make_req("a", [9, 9, 9], 0.0), _make_req("b", [1, 2, 7, 7], 1.0),
               _make_req("c", [1, 2, 3, 4, 5, 8], 2.0), _make_req("d", [1, 2, 3, 9], 3.0),
               _make_req("e", [1, 2, 3, 4, 0], 4.0)]
    make_schedule_policy("lpm").sort(waiting, cache)
    assert [r.rid for r in waiting] == ["c", "e", "d", "b", "a"]  # matches 5, 4, 3, 2, 0
    make_schedule_policy("fcfs").sort(waiting, cache)
    assert [r.rid for r in waiting] == ["a", "b", "c", "d", "e"]
    with pytest.raises(ValueError, match="unknown schedule policy"):
        make_schedule_policy("random")


@pytest.mark.slow
def test_chunked_prefill_matches_unchunked(engine):
    text = ("Once upon a time, in a land far away, there lived a curious fox who loved to read books "
            "about the stars and the sea. Every night it climbed the tallest hill to watch the sky.")
    kw = dict(return_logprob=True, logprob_start_len=0)
    ref = engine.generate(text, GREEDY, **kw)
    chunked = sgl.Engine(chunked_prefill_size=8, max_prefill_tokens=8, log_interval=0, max_total_tokens=2048)
    try:
        out = chunked.generate(text, GREEDY, **kw)
        assert out["output_ids"] == ref["output_ids"]
        a = [lp for lp, _, _ in ref["meta_info"]["input_token_logprobs"][1:]]
        b = [lp for lp, _, _ in out["meta_info"]["input_token_logprobs"][1:]]
        assert len(a) == len(b) == ref["meta_info"]["prompt_tokens"] - 1
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-4)
        chunked.check_integrity()
    finally:
        chunked.shutdown()


@pytest.mark.slow
def test_retraction_under_tiny_kv_budget(engine, chat_prompts):
    prompts = [p + f" Answer number {i}." for i, p in enumerate(chat_prompts * 3)]
    params = {"temperature": 0, "max_new_tokens": 24, "ignore_eos": True}
    ref = engine.generate(prompts, params)
    small = sgl.Engine(max_total_tokens=260, init_new_token_ratio=0.0, min_new_token_ratio=0.0, log_interval=0)
    try:
        outs = small.generate(prompts, params)
        info = small.get_server_info()
        assert info["stats"]["num_retractions"] > 0
        assert [o["output_ids"] for o in outs] == [o["output_ids"] for o in ref]
        small.check_integrity()
        assert small.flush_cache()
        assert small.get_server_info()["available_kv_tokens"] == info["max_total_num_tokens"]
    finally:
        small.shutdown()


@pytest.mark.slow
def test_cache_none_same_output_and_pool_returns(engine, chat_prompts):
    ref = engine.generate(chat_prompts, GREEDY)
    none = sgl.Engine(cache="none", log_interval=0, max_total_tokens=2048)
    try:
        outs = none.generate(chat_prompts, GREEDY)
        again = none.generate(chat_prompts[0], GREEDY)
        assert [o["output_ids"] for o in outs] == [o["output_ids"] for o in ref]
        assert again["meta_info"]["cached_tokens"] == 0
        info = none.get_server_info()
        assert info["available_kv_tokens"] == info["max_total_num_tokens"] == 2048
    finally:
        none.shutdown()


@pytest.mark.slow
def test_in_batch_prefix_sharing(engine):
    """Requests arriving together with a long shared prefix compute it once (the others wait a step)."""
    tok = engine.tokenizer
    system = "You are a helpful librarian. Always answer briefly and politely. " * 8
    prompts = [tok.apply_chat_template([{"role": "system", "content": system}, {"role": "user", "content": q}],
                                       tokenize=False, add_generation_prompt=True)
               for q in ["Hi", "Where are the maps?", "Do you have novels?", "When do you close?"]]
    ids = [tok(p)["input_ids"] for p in prompts]
    shared = next(i for i, col in enumerate(zip(*ids)) if len(set(col)) > 1)
    engine.flush_cache()
    outs = engine.generate(prompts, {"temperature": 0, "max_new_tokens": 2})
    cached = sorted(o["meta_info"]["cached_tokens"] for o in outs)
    assert cached[0] == 0 and all(c >= shared for c in cached[1:])


@pytest.mark.slow
def test_tiny_pool_long_outputs_and_many_chunked_prompts_finish(engine):
    """A pool far smaller than the demand: requests queue, chunk, retract and resume; none is lost."""
    text = "Tell me everything you know about the history of the printing press in Europe. " * 3
    small = sgl.Engine(max_total_tokens=160, chunked_prefill_size=16, max_prefill_tokens=32, log_interval=0)
    try:
        params = {"temperature": 0, "max_new_tokens": 40, "ignore_eos": True}
        outs = small.generate([text + str(i) for i in range(5)], params)
        assert [o["meta_info"]["finish_reason"]["type"] for o in outs] == ["length"] * 5
        assert all(o["meta_info"]["completion_tokens"] == 40 for o in outs)
        ref = engine.generate(text + "0", params)
        assert outs[0]["output_ids"] == ref["output_ids"]
        alone = small.generate("Hi", {"max_new_tokens": 1000, "ignore_eos": True})  # outgrows the pool
        assert alone["meta_info"]["finish_reason"]["type"] == "abort"
        assert "max_total_tokens" in alone["meta_info"]["finish_reason"]["message"]
        small.check_integrity()
    finally:
        small.shutdown()


def test_dfs_weight_groups_shared_prefixes():
    pool = TokenToKVPool(64, 1, 1, 2)
    cache = RadixCache(pool)
    cache.insert([1, 2, 3], pool.alloc(3))
    cache.insert([5, 6, 7], pool.alloc(3))
    waiting = [_make_req("x", [5, 6, 7, 1], 0.0), _make_req("a", [1, 2, 3, 4], 1.0),
               _make_req("b", [1, 2, 3, 8], 2.0), _make_req("c", [1, 2, 3, 9], 3.0)]
    make_schedule_policy("dfs-weight").sort(waiting, cache)
    assert [r.rid for r in waiting] == ["a", "b", "c", "x"]  # the larger group under [1,2,3] first


@pytest.mark.slow
def test_failed_step_aborts_batch_and_engine_recovers(chat_prompts):
    """A step that raises fails only the requests holding KV; the pools are rebuilt and serving goes on."""
    e = sgl.Engine(log_interval=0, max_total_tokens=2048)
    try:
        real = e.runner.forward
        calls = {"n": 0}

        def flaky(batch):  # the third decode step fails
            calls["n"] += batch.forward_mode.is_decode()
            if calls["n"] == 3 and batch.forward_mode.is_decode():
                raise RuntimeError("injected failure")
            return real(batch)

        e.runner.forward = flaky
        out = e.generate(chat_prompts[0], {"max_new_tokens": 8, "ignore_eos": True})
        assert out["meta_info"]["finish_reason"]["type"] == "abort"
        assert "injected failure" in out["meta_info"]["finish_reason"]["message"]
        ok = e.generate(chat_prompts[0], {"max_new_tokens": 8, "ignore_eos": True, "temperature": 0})
        assert ok["meta_info"]["completion_tokens"] == 8
        e.check_integrity()
        assert e.flush_cache()
        info = e.get_server_info()
        assert info["available_kv_tokens"] == info["max_total_num_tokens"] == 2048
    finally:
        e.shutdown()
