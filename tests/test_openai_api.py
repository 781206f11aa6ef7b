"""The OpenAI-compatible routes, driven by the official ``openai`` client."""

from __future__ import annotations

import json
import re

import jsonschema
import openai
import pytest

from sgl.server.serve import BackgroundServer

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def server(engine):
    with BackgroundServer(engine) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def chat_ids(engine, messages):
    return list(engine.tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False,
                                                     add_generation_prompt=True))


def test_models(client, engine):
    models = client.models.list().data
    assert [m.id for m in models] == [str(engine.model_path)]
    assert models[0].owned_by == "sgl"


def test_chat_matches_engine_greedy(client, engine):
    res = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=8, temperature=0)
    ids = chat_ids(engine, MESSAGES)
    ref = engine.generate(input_ids=ids, sampling_params={"max_new_tokens": 8, "temperature": 0.0})
    choice = res.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == ref["text"]
    assert choice.index == 0 and choice.finish_reason in ("stop", "length")
    assert res.object == "chat.completion" and res.id.startswith("chatcmpl-")
    assert res.usage.prompt_tokens == len(ids)
    assert res.usage.completion_tokens == ref["meta_info"]["completion_tokens"]
    assert res.usage.total_tokens == res.usage.prompt_tokens + res.usage.completion_tokens


def test_completion_matches_engine_and_stops(client, engine):
    prompt = "1, 2, 3, 4,"
    res = client.completions.create(model="m", prompt=prompt, max_tokens=6, temperature=0)
    ref = engine.generate(prompt=prompt, sampling_params={"max_new_tokens": 6, "temperature": 0.0})
    assert res.choices[0].text == ref["text"] and res.object == "text_completion"
    stopped = client.completions.create(model="m", prompt=prompt, max_tokens=12, temperature=0, stop=[","])
    assert "," not in stopped.choices[0].text and stopped.choices[0].finish_reason == "stop"
    assert ref["text"].startswith(stopped.choices[0].text)


def test_chat_stream_equals_non_stream_with_usage(client):
    kw = dict(model="m", messages=MESSAGES, max_completion_tokens=8, temperature=0)
    full = client.chat.completions.create(**kw).choices[0].message.content
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishes) == 1
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1
    assert all(c.usage is None for c in chunks[:-1])


def test_completion_stream(client):
    kw = dict(model="m", prompt="Once upon a time", max_tokens=6, temperature=0)
    full = client.completions.create(**kw).choices[0].text
    chunks = list(client.completions.create(**kw, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == full
    assert chunks[-1].choices[0].finish_reason == "length"


def test_n2_streaming_keeps_indices_apart(client):
    kw = dict(model="m", messages=[{"role": "user", "content": "Say a random word."}], max_tokens=6,
              temperature=1.0, seed=1234, n=2)
    reference = [c.message.content for c in sorted(client.chat.completions.create(**kw).choices,
                                                   key=lambda c: c.index)]
    texts, finished = {0: "", 1: ""}, {0: 0, 1: 0}
    for chunk in client.chat.completions.create(**kw, stream=True):
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            finished[c.index] += c.finish_reason is not None
    assert finished == {0: 1, 1: 1}
    assert [texts[0], texts[1]] == reference


def test_chat_top_logprobs_per_position(client):
    res = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=5, temperature=0,
                                         logprobs=True, top_logprobs=3)
    content = res.choices[0].logprobs.content
    assert len(content) == res.usage.completion_tokens
    assert "".join(t.token for t in content) == res.choices[0].message.content
    for item in content:
        tops = item.top_logprobs
        assert len(tops) == 3
        assert [t.logprob for t in tops] == sorted((t.logprob for t in tops), reverse=True)
        assert item.token == tops[0].token and item.logprob == pytest.approx(tops[0].logprob)
        assert item.bytes == list(item.token.encode("utf-8")) and item.logprob <= 0


def test_completion_logprobs_and_echo(client):
    res = client.completions.create(model="m", prompt="The sky is", max_tokens=3, temperature=0, logprobs=2)
    lp = res.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 3
    assert all(len(t) <= 2 and max(t.values()) <= 0 for t in lp.top_logprobs)
    echo = client.completions.create(model="m", prompt="The sky is blue", max_tokens=0, echo=True, logprobs=0)
    e = echo.choices[0]
    assert e.text == "The sky is blue" and e.logprobs.token_logprobs[0] is None
    assert "".join(e.logprobs.tokens) == "The sky is blue" and all(v < 0 for v in e.logprobs.token_logprobs[1:])


def test_json_schema_output_validates(client):
    schema = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
              "properties": {"name": {"type": "string", "maxLength": 12},
                             "age": {"type": "integer", "minimum": 0, "maximum": 150}}}
    res = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "Describe a person as JSON."}], max_tokens=48,
        temperature=0, response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}})
    jsonschema.validate(json.loads(res.choices[0].message.content), schema)
    assert res.choices[0].finish_reason == "stop"


def test_regex_extension(client):
    res = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=10, temperature=0,
                                         extra_body={"regex": "(Paris|London|Rome)\\."})
    assert re.fullmatch(r"(Paris|London|Rome)\.", res.choices[0].message.content)


def test_errors_surface_as_openai_bad_request(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=2, stop=[""])
    assert "stop" in str(info.value)
    ok = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=1, temperature=0)
    assert ok.usage.completion_tokens == 1


def test_dropped_chat_stream_aborts_every_choice(server):
    import http.client
    import time

    import requests

    def info():
        return requests.get(server.url + "/get_server_info", timeout=30).json()

    before = info()["stats"]["num_aborted"]
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    body = json.dumps({"model": "m", "messages": MESSAGES, "max_tokens": 400, "n": 2, "stream": True,
                       "ignore_eos": True})
    conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.readline().startswith(b"data:")
    conn.close()
    deadline = time.monotonic() + 60
    while (now := info())["num_running_reqs"] or now["stats"]["num_aborted"] < before + 2:
        assert time.monotonic() < deadline, now
        time.sleep(0.2)
    assert now["stats"]["num_aborted"] == before + 2 and now["cache_protected_tokens"] == 0
    assert now["num_inflight_http_requests"] == 0
