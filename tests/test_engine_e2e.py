"""End-to-end engine tests on the bundled model (real values, greedy decoding)."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.slow

GREEDY = {"temperature": 0, "max_new_tokens": 24}


@pytest.fixture(scope="module")
def hf_model(engine):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(engine.loaded.model_dir, torch_dtype=torch.float32)
    m.eval()
    return m


def test_greedy_matches_transformers_generate(engine, hf_model, chat_prompts):
    outs = engine.generate(chat_prompts, GREEDY)
    for prompt, out in zip(chat_prompts, outs):
        ids = engine.tokenizer(prompt, return_tensors="pt")["input_ids"]
        ref = hf_model.generate(ids, max_new_tokens=GREEDY["max_new_tokens"], do_sample=False,
                                eos_token_id=list(engine.eos_token_ids), pad_token_id=engine.eos_token_ids[0])
        ref_ids = ref[0, ids.shape[1]:].tolist()
        if ref_ids and ref_ids[-1] in engine.eos_token_ids:
            ref_ids = ref_ids[:-1]
        ours = out["output_ids"]
        if ours and ours[-1] in engine.eos_token_ids:
            ours = ours[:-1]
        assert ours == ref_ids
        assert out["text"] == engine.tokenizer.decode(ref_ids, skip_special_tokens=True)


def test_cached_tokens_on_repeated_prefix(engine, chat_prompts):
    first = engine.generate(chat_prompts[0], GREEDY)
    second = engine.generate(chat_prompts[0], GREEDY)
    n = first["meta_info"]["prompt_tokens"]
    assert second["meta_info"]["cached_tokens"] == n - 1  # all but the last prompt token
    assert second["output_ids"] == first["output_ids"]
    engine.check_integrity()


def test_max_new_tokens_zero_prefill_only(engine, chat_prompts):
    out = engine.generate(chat_prompts[1], {"max_new_tokens": 0}, return_logprob=True, logprob_start_len=0)
    assert out["text"] == "" and out["output_ids"] == []
    assert out["meta_info"]["finish_reason"] == {"type": "length", "length": 0}
    lps = out["meta_info"]["input_token_logprobs"]
    assert len(lps) == out["meta_info"]["prompt_tokens"]
    assert lps[0][0] is None and all(lp <= 0 for lp, _, _ in lps[1:])


def test_prompt_logprobs_match_reference(engine, hf_model):
    text = "The quick brown fox jumps over the lazy dog."
    out = engine.generate(text, {"max_new_tokens": 1, "temperature": 0}, return_logprob=True,
                          logprob_start_len=2, top_logprobs_num=3)
    ids = engine.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = torch.log_softmax(hf_model(ids).logits[0].float(), -1)
    got = out["meta_info"]["input_token_logprobs"]
    assert [t for _, t, _ in got] == ids[0, 2:].tolist()
    for (lp, tok, _), pos in zip(got, range(2, ids.shape[1])):
        assert lp == pytest.approx(ref[pos - 1, tok].item(), abs=2e-3)
    top = out["meta_info"]["input_top_logprobs"]
    assert len(top) == len(got) and all(len(t) == 3 for t in top)
    assert top[0][0][1] == int(ref[1].argmax())
    out_lp = out["meta_info"]["output_token_logprobs"][0]
    assert out_lp[1] == int(ref[-1].argmax()) and out_lp[0] == pytest.approx(ref[-1].max().item(), abs=2e-3)


def test_stop_string_across_tokens_trimmed(engine, chat_prompts):
    full = engine.generate(chat_prompts[0], {"temperature": 0, "max_new_tokens": 16})["text"]
    assert len(full) > 8
    stop = full[3:7]  # most likely spans a token boundary
    out = engine.generate(chat_prompts[0], {"temperature": 0, "max_new_tokens": 16, "stop": stop})
    assert out["text"] == full[:full.index(stop)]
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    streamed = list(engine.generate(chat_prompts[0], {"temperature": 0, "max_new_tokens": 16, "stop": stop},
                                    stream=True))
    assert all(stop not in s["text"] and s["text"] == out["text"][:len(s["text"])] for s in streamed)
    assert streamed[-1]["text"] == out["text"]


def test_stream_utf8_concatenation(engine):
    tok = engine.tokenizer
    prompt = tok.apply_chat_template([{"role": "user", "content": "Write three emojis and the word café."}],
                                     tokenize=False, add_generation_prompt=True)
    params = {"temperature": 0.8, "max_new_tokens": 40, "sampling_seed": 7}
    chunks = list(engine.generate(prompt, params, stream=True))
    final = engine.generate(prompt, params)
    assert chunks[-1]["text"] == final["text"]
    prev = ""
    for c in chunks:
        assert c["text"].startswith(prev) and "\ufffd" not in c["text"]
        prev = c["text"]


def test_seeded_sampling_reproducible_across_batches(engine, chat_prompts):
    p = {"temperature": 1.0, "max_new_tokens": 12, "sampling_seed": 1234}
    alone = engine.generate(chat_prompts[2], p)
    batched = engine.generate(chat_prompts, [{"temperature": 0.7, "max_new_tokens": 12}, GREEDY, p])
    assert batched[2]["output_ids"] == alone["output_ids"]


@pytest.mark.parametrize("bad, field", [
    ({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"), ({"bogus": 1}, "bogus"),
    ({"stop": [""]}, "stop"), ({"max_new_tokens": -2}, "max_new_tokens"), ({"top_k": 0}, "top_k"),
])
def test_bad_sampling_params_raise_and_engine_keeps_serving(engine, bad, field):
    with pytest.raises(ValueError, match=field):
        engine.generate("Hello", bad)
    assert engine.generate("Hello", {"max_new_tokens": 2})["meta_info"]["completion_tokens"] == 2


def test_bad_prompts_raise(engine):
    with pytest.raises(ValueError, match="empty"):
        engine.generate("", GREEDY)
    with pytest.raises(ValueError, match="context length"):
        engine.generate(input_ids=[1] * (engine.context_len + 5))
    with pytest.raises(ValueError, match="input_ids"):
        engine.generate(input_ids=[engine.vocab_size + 3])
    with pytest.raises(ValueError, match="exactly one"):
        engine.generate()
    with pytest.raises(ValueError, match="top_logprobs_num"):
        engine.generate("Hi", return_logprob=True, top_logprobs_num=engine.vocab_size + 1)
    with pytest.raises(ValueError, match="logprob_start_len"):
        engine.generate("Hi", return_logprob=True, logprob_start_len=50)


def test_abort_and_integrity(engine, chat_prompts):
    it = engine.generate(chat_prompts[0], {"max_new_tokens": 200, "ignore_eos": True}, stream=True)
    next(it)
    it.close()  # dropping the stream aborts the request
    engine.generate("warm", {"max_new_tokens": 1})
    info = engine.get_server_info()
    assert info["num_running_reqs"] == 0 and info["cache_protected_tokens"] == 0
    engine.check_integrity()


def test_async_generate_and_stream_concurrently(engine, chat_prompts):
    import asyncio

    ref = engine.generate(chat_prompts, GREEDY)

    async def main():
        async def stream(p):
            last = None
            async for chunk in await engine.async_generate(p, GREEDY, stream=True):
                last = chunk
            return last

        outs = await asyncio.gather(*(engine.async_generate(p, GREEDY) for p in chat_prompts),
                                    *(stream(p) for p in chat_prompts))
        return outs

    outs = asyncio.run(main())
    n = len(chat_prompts)
    for i in range(n):
        assert outs[i]["output_ids"] == ref[i]["output_ids"]
        assert outs[n + i]["text"] == ref[i]["text"]
        assert outs[n + i]["meta_info"]["finish_reason"] is not None


def test_many_threads_share_one_scheduler(engine, chat_prompts):
    from concurrent.futures import ThreadPoolExecutor

    ref = engine.generate(chat_prompts[0], GREEDY)
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda _: engine.generate(chat_prompts[0], GREEDY), range(16)))
    assert all(o["output_ids"] == ref["output_ids"] for o in outs)
    engine.check_integrity()


def test_shutdown_aborts_waiters_and_refuses_new_requests(chat_prompts):
    import threading

    import sgl

    e = sgl.Engine(log_interval=0, max_total_tokens=1024)
    results = []
    t = threading.Thread(target=lambda: results.append(
        e.generate(chat_prompts[0], {"max_new_tokens": 500, "ignore_eos": True})))
    t.start()
    while not e.get_server_info()["num_running_reqs"]:
        pass
    e.shutdown()
    t.join(timeout=30)
    assert not t.is_alive()
    assert results[0]["meta_info"]["finish_reason"]["type"] == "abort"
    with pytest.raises(RuntimeError, match="shut down"):
        e.generate("Hi", {"max_new_tokens": 2})


def test_closed_event_loop_of_one_stream_does_not_hurt_others(engine):
    import asyncio
    import threading

    res = {}
    other = threading.Thread(target=lambda: res.setdefault("o", engine.generate(
        "Another user's request", {"max_new_tokens": 24, "ignore_eos": True})))
    other.start()

    async def read_one_chunk():
        agen = await engine.async_generate("Write a long story", {"max_new_tokens": 24, "ignore_eos": True},
                                           stream=True)
        async for _ in agen:
            break
        await agen.aclose()

    asyncio.run(read_one_chunk())  # the loop closes while the scheduler may still be sending
    other.join(timeout=120)
    assert res["o"]["meta_info"]["finish_reason"] == {"type": "length", "length": 24}
    engine.check_integrity()


@pytest.mark.parametrize("call, field", [
    (lambda e: e.generate(123), "prompt"),
    (lambda e: e.generate(b"hi"), "prompt"),
    (lambda e: e.generate("hi \udcff"), "prompt"),
    (lambda e: e.generate(input_ids=[[1, 2], 3]), "input_ids"),
    (lambda e: e.generate("hi", {"seed": 2**64}), "sampling_seed"),
])
def test_bad_input_types_raise_value_errors(engine, call, field):
    with pytest.raises(ValueError, match=field):
        call(engine)


def test_tensor_input_ids_and_duplicate_rids(engine):
    ids = engine.tokenizer("Hello there")["input_ids"]
    a = engine.generate(input_ids=torch.tensor(ids), sampling_params=GREEDY)
    b = engine.generate(input_ids=ids, sampling_params=GREEDY)
    assert a["output_ids"] == b["output_ids"]
    with pytest.raises(ValueError, match="rid"):
        engine.generate(["a", "b"], GREEDY, rid=["same", "same"])
    assert engine.generate("a", GREEDY, rid="same")["meta_info"]["id"] == "same"  # free again once finished


def test_constrained_logprobs_cover_every_output_token(engine):
    out = engine.generate("Name: ", {"max_new_tokens": 20, "temperature": 0, "regex": r"Name is (Alice|Bob)ert and more"},
                          return_logprob=True)
    assert len(out["meta_info"]["output_token_logprobs"]) == out["meta_info"]["completion_tokens"]
    assert [t for _, t, _ in out["meta_info"]["output_token_logprobs"]] == out["output_ids"]
