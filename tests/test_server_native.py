"""Native (SGLang-compatible) routes on a real uvicorn server over the session engine.

The server runs in a thread of the test process (``BackgroundServer``) on
127.0.0.1, sharing the conftest ``engine``; clients are plain ``requests``.
"""

from __future__ import annotations

import http.client
import json
import threading
import time

import pytest
import requests

from sgl.server.serve import BackgroundServer

PROMPT = "The capital of France is"
GREEDY = {"max_new_tokens": 6, "temperature": 0.0}


@pytest.fixture(scope="module")
def server(engine):
    with BackgroundServer(engine) as srv:
        yield srv


def post(server, path, body, **kw):
    return requests.post(server.url + path, json=body, timeout=120, **kw)


def sse_payloads(lines):
    """JSON payloads of ``data:`` lines, and whether ``[DONE]`` closed the stream."""
    out, done = [], False
    for line in lines:
        if not line.startswith(b"data:"):
            continue
        body = line[5:].strip()
        if body == b"[DONE]":
            done = True
            break
        out.append(json.loads(body))
    return out, done


def pool_state(server) -> dict:
    return requests.get(server.url + "/get_server_info", timeout=30).json()


def wait_idle(server, timeout=60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        info = pool_state(server)
        if info["num_running_reqs"] == 0 and info["num_waiting_reqs"] == 0:
            return info
        assert time.monotonic() < deadline, f"server still busy: {info}"
        time.sleep(0.2)


def test_generate_single_matches_engine(server, engine):
    res = post(server, "/generate", {"text": PROMPT, "sampling_params": GREEDY})
    assert res.status_code == 200
    body = res.json()
    ref = engine.generate(prompt=PROMPT, sampling_params=GREEDY)
    assert body["text"] == ref["text"] and body["text"]
    meta = body["meta_info"]
    assert meta["prompt_tokens"] == len(engine.tokenizer(PROMPT)["input_ids"])
    assert meta["completion_tokens"] == 6
    assert meta["finish_reason"] == {"type": "length", "length": 6}


def test_generate_batch_and_input_ids(server, engine):
    ids = engine.tokenizer(PROMPT)["input_ids"]
    res = post(server, "/generate", {"input_ids": [ids, ids[:3]], "sampling_params": [GREEDY, {**GREEDY, "max_new_tokens": 2}]})
    assert res.status_code == 200
    outs = res.json()
    assert isinstance(outs, list) and len(outs) == 2
    assert [o["meta_info"]["completion_tokens"] for o in outs] == [6, 2]
    assert [o["meta_info"]["prompt_tokens"] for o in outs] == [len(ids), 3]
    single = post(server, "/generate", {"text": PROMPT, "sampling_params": GREEDY}).json()
    assert outs[0]["text"] == single["text"]


def test_logprobs_are_triples(server, engine):
    n_prompt = len(engine.tokenizer(PROMPT)["input_ids"])
    res = post(server, "/generate", {"text": PROMPT, "sampling_params": {**GREEDY, "max_new_tokens": 3},
                                     "return_logprob": True, "logprob_start_len": 1, "top_logprobs_num": 2,
                                     "return_text_in_logprobs": True})
    meta = res.json()["meta_info"]
    assert len(meta["input_token_logprobs"]) == n_prompt - 1
    out = meta["output_token_logprobs"]
    assert len(out) == 3
    for (lp, tid, text), top in zip(out, meta["output_top_logprobs"]):
        assert lp <= 0.0 and isinstance(tid, int) and text == engine.tokenizer.decode([tid])
        assert len(top) == 2 and top[0][0] >= top[1][0]
        assert top[0][1] == tid  # greedy: the chosen token is the most likely one
    assert "".join(t[2] for t in out) == res.json()["text"]


def test_stream_is_cumulative_and_closed_by_done(server):
    with requests.post(server.url + "/generate", json={"text": PROMPT, "sampling_params": GREEDY, "stream": True},
                       stream=True, timeout=120) as res:
        assert res.status_code == 200 and res.headers["content-type"].startswith("text/event-stream")
        chunks, done = sse_payloads(res.iter_lines())
    assert done and len(chunks) >= 2
    texts = [c["text"] for c in chunks]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))
    assert [c["meta_info"]["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1]["meta_info"]["finish_reason"]["type"] == "length"
    full = post(server, "/generate", {"text": PROMPT, "sampling_params": GREEDY}).json()["text"]
    assert texts[-1] == full


def test_info_routes(server, engine):
    info = requests.get(server.url + "/get_model_info", timeout=30).json()
    assert info["model_path"] == str(engine.model_path) and info["is_generation"] is True
    assert info["tokenizer_path"] and "<|im_start|>" in info["chat_template"]
    for path in ("/get_server_info", "/server_info"):
        s = requests.get(server.url + path, timeout=30).json()
        assert s["max_total_num_tokens"] > 0 and "version" in s and s["server"]["api_key"] is None
    assert requests.get(server.url + "/health", timeout=30).status_code == 200
    assert requests.get(server.url + "/health_generate", timeout=60).status_code == 200
    tok = post(server, "/tokenize", {"text": [PROMPT, "hi"]}).json()
    assert tok["tokens"][0] == list(engine.tokenizer(PROMPT)["input_ids"]) and tok["count"][1] >= 1


def test_metrics_count_requests_and_tokens(server):
    before = requests.get(server.url + "/metrics", timeout=30).text
    post(server, "/generate", {"text": PROMPT, "sampling_params": {**GREEDY, "max_new_tokens": 2}})
    text = requests.get(server.url + "/metrics", timeout=30).text

    def value(body, name):
        for line in body.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                if "/generate" in line or "{" not in line:
                    return float(line.rsplit(" ", 1)[1])
        return 0.0

    assert value(text, "sgl_generation_tokens_total") - value(before, "sgl_generation_tokens_total") == 2
    assert 'sgl_requests_total{route="/generate",status="200"}' in text
    for name in ("sgl_time_to_first_token_seconds_bucket", "sgl_inter_token_latency_seconds_bucket",
                 "sgl_cache_hit_rate", "sgl_num_queue_reqs", "sgl_num_running_reqs"):
        assert name in text


def test_dropped_stream_aborts_and_frees_kv(server, engine):
    base = wait_idle(server)
    aborted_before = base["stats"]["num_aborted"]
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    body = json.dumps({"text": "Write a very long story about a dragon.", "stream": True,
                       "sampling_params": {"max_new_tokens": 500, "temperature": 0.0, "ignore_eos": True}})
    conn.request("POST", "/generate", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.readline().startswith(b"data:")  # at least one token arrived
    conn.close()  # the client goes away mid-stream
    info = wait_idle(server, timeout=60)
    assert info["stats"]["num_aborted"] == aborted_before + 1
    assert info["stats"]["generation_tokens"] - base["stats"]["generation_tokens"] < 500
    # Nothing is held any more: every slot is free or an evictable cache entry, as before.
    assert info["available_kv_tokens"] + info["cache_evictable_tokens"] == info["max_total_num_tokens"]
    assert info["cache_protected_tokens"] == base["cache_protected_tokens"] == 0
    engine.check_integrity()
    assert post(server, "/generate", {"text": PROMPT, "sampling_params": GREEDY}).status_code == 200


def test_dropped_non_streaming_client_aborts_and_frees_kv(server, engine):
    base = wait_idle(server)
    aborted_before = base["stats"]["num_aborted"]
    with pytest.raises(requests.exceptions.Timeout):
        requests.post(server.url + "/generate", json={
            "text": "Write a very long story about a dragon.",
            "sampling_params": {"max_new_tokens": 2000, "temperature": 0.0, "ignore_eos": True}}, timeout=2)
    info = wait_idle(server, timeout=60)
    assert info["stats"]["num_aborted"] == aborted_before + 1
    assert info["available_kv_tokens"] + info["cache_evictable_tokens"] == info["max_total_num_tokens"]
    engine.check_integrity()


def test_flush_cache_refused_during_stream_and_stream_intact(server):
    wait_idle(server)
    params = {"max_new_tokens": 32, "temperature": 0.0, "ignore_eos": True}
    reference = post(server, "/generate", {"text": "Once upon a time", "sampling_params": params}).json()["text"]
    first_chunk = threading.Event()
    result = {}

    def consume():
        with requests.post(server.url + "/generate", json={"text": "Once upon a time", "stream": True,
                                                            "sampling_params": params}, stream=True, timeout=120) as r:
            lines = []
            for line in r.iter_lines():
                lines.append(line)
                if line.startswith(b"data:"):
                    first_chunk.set()
            result["chunks"], result["done"] = sse_payloads(lines)

    t = threading.Thread(target=consume)
    t.start()
    assert first_chunk.wait(60)
    refused = post(server, "/flush_cache", {})
    t.join(120)
    assert refused.status_code == 400
    assert "not flushed" in refused.json()["error"]["message"]
    chunks = result["chunks"]
    assert result["done"] and chunks[-1]["text"] == reference
    assert chunks[-1]["meta_info"]["completion_tokens"] == 32
    wait_idle(server)
    ok = post(server, "/flush_cache", {})
    assert ok.status_code == 200 and ok.json()["success"] is True
    assert pool_state(server)["cache_total_tokens"] == 0


def test_abort_request_by_rid(server):
    wait_idle(server)
    rid = "test-abort-rid"
    with requests.post(server.url + "/generate", json={"text": "Count to one thousand:", "stream": True, "rid": rid,
                                                         "sampling_params": {"max_new_tokens": 400, "ignore_eos": True}},
                       stream=True, timeout=120) as res:
        lines = res.iter_lines()
        first = next(line for line in lines if line.startswith(b"data:"))
        assert json.loads(first[5:])["meta_info"]["id"] == rid
        assert post(server, "/abort_request", {"rid": rid}).json() == {"success": True, "aborted": 1}
        chunks, done = sse_payloads(lines)
    assert post(server, "/abort_request", {"rid": "no-such-rid"}).json() == {"success": True, "aborted": 0}
    assert done and chunks[-1]["meta_info"]["finish_reason"]["type"] == "abort"
    assert chunks[-1]["meta_info"]["completion_tokens"] < 400
