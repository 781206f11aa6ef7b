"""64 concurrent requests from 8 client threads (8 in flight per thread, mixed routes and
streaming) all complete with the right token counts, and the server stays healthy."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest
import requests

from sgl.server.serve import BackgroundServer

THREADS, PER_THREAD, MAX_TOKENS = 8, 8, 4


@pytest.fixture(scope="module")
def server(engine):
    with BackgroundServer(engine, log_requests=False) as srv:
        yield srv


async def one_request(client: httpx.AsyncClient, kind: int, i: int) -> dict:
    """Send request ``i`` of route/stream variant ``kind``; returns what the test checks."""
    prompt = f"Request number {i}: list some fruits"
    if kind in (0, 1):  # native, plain and streamed
        body = {"text": prompt, "stream": kind == 1,
                "sampling_params": {"max_new_tokens": MAX_TOKENS, "temperature": 0.7, "ignore_eos": True}}
        if kind == 0:
            res = await client.post("/generate", json=body)
            meta = res.json()["meta_info"]
        else:
            async with client.stream("POST", "/generate", json=body) as res:
                lines = [line async for line in res.aiter_lines() if line.startswith("data:")]
            assert lines[-1] == "data: [DONE]"
            meta = json.loads(lines[-2][5:])["meta_info"]
        return {"kind": kind, "prompt": prompt, "prompt_tokens": meta["prompt_tokens"],
                "completion_tokens": meta["completion_tokens"], "status": res.status_code}
    if kind in (2, 3):  # completions, plain and streamed with usage
        body = {"model": "m", "prompt": prompt, "max_tokens": MAX_TOKENS, "ignore_eos": True}
    else:  # chat, plain and streamed with usage
        body = {"model": "m", "messages": [{"role": "user", "content": prompt}], "max_tokens": MAX_TOKENS,
                "ignore_eos": True}
    path = "/v1/completions" if kind in (2, 3) else "/v1/chat/completions"
    if kind in (2, 4):
        res = await client.post(path, json=body)
        usage = res.json()["usage"]
    else:
        body.update(stream=True, stream_options={"include_usage": True})
        async with client.stream("POST", path, json=body) as res:
            lines = [line async for line in res.aiter_lines() if line.startswith("data:")]
        usage = json.loads(lines[-2][5:])["usage"]
    return {"kind": kind, "prompt": prompt, "prompt_tokens": usage["prompt_tokens"],
            "completion_tokens": usage["completion_tokens"], "status": res.status_code}


def client_thread(url: str, t: int, results: list, errors: list) -> None:
    async def run():
        async with httpx.AsyncClient(base_url=url, timeout=300) as client:
            jobs = [one_request(client, (t + j) % 6, t * PER_THREAD + j) for j in range(PER_THREAD)]
            return await asyncio.gather(*jobs)
    try:
        results.extend(asyncio.run(run()))
    except Exception as e:  # noqa: BLE001 - reported by the test
        errors.append(repr(e))


def test_64_concurrent_requests_from_8_threads(server, engine):
    results: list = []
    errors: list = []
    threads = [threading.Thread(target=client_thread, args=(server.url, t, results, errors)) for t in range(THREADS)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    elapsed = time.perf_counter() - start
    assert not errors, errors
    assert len(results) == THREADS * PER_THREAD
    tok = engine.tokenizer
    for r in results:
        assert r["status"] == 200
        assert r["completion_tokens"] == MAX_TOKENS, r
        if r["kind"] < 4:
            assert r["prompt_tokens"] == len(tok(r["prompt"])["input_ids"]), r
        else:
            msgs = [{"role": "user", "content": r["prompt"]}]
            ids = tok.apply_chat_template(msgs, tokenize=True, return_dict=False, add_generation_prompt=True)
            assert r["prompt_tokens"] == len(ids), r
    assert sorted({r["kind"] for r in results}) == list(range(6))
    print(f"64 requests in {elapsed:.1f} s")

    assert requests.get(server.url + "/health_generate", timeout=60).status_code == 200
    info = requests.get(server.url + "/get_server_info", timeout=30).json()
    assert info["num_running_reqs"] == 0 and info["cache_protected_tokens"] == 0
    assert info["num_inflight_http_requests"] == 0
    metrics = requests.get(server.url + "/metrics", timeout=30).text
    served = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                 if line.startswith("sgl_requests_total{") and 'status="200"' in line
                 and any(p in line for p in ('"/generate"', '"/v1/completions"', '"/v1/chat/completions"')))
    assert served == THREADS * PER_THREAD
