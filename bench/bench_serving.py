"""Online serving benchmark (in the spirit of SGLang's ``bench_serving``).

Sends ``--num-prompts`` streamed requests with random token-id prompts to a
running server (``--base-url``) or to one it starts itself (``--launch``), at
``--request-rate`` requests/s (Poisson arrivals; ``inf`` = all at once), with
at most ``--max-concurrency`` in flight. Reports, from the client's clock:

- TTFT: time from sending a request to its first streamed token (ms);
- ITL: time between consecutive streamed chunks, per generated token (ms);
- E2E latency per request (ms);
- request throughput (req/s) and input / output token throughput (tok/s).

Example (2-core CPU, bundled model)::

    python bench/bench_serving.py --launch "python -m sgl.launch scheduler.log_interval=0" \\
        --num-prompts 32 --input-len 64 --output-len 16 --request-rate inf

``--backend sgl`` uses native ``/generate``, ``openai`` uses ``/v1/completions``.
Every request uses ``ignore_eos`` so each generates exactly ``--output-len`` tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import List, Optional

import httpx


@dataclass
class RequestResult:
    """Timings of one request (seconds) and its token counts."""

    ok: bool = False
    error: str = ""
    prompt_len: int = 0
    output_len: int = 0
    ttft: float = 0.0
    latency: float = 0.0
    itl: List[float] = field(default_factory=list)


def make_prompts(n: int, input_len: int, vocab_size: int, seed: int) -> List[List[int]]:
    """``n`` prompts of ``input_len`` random token ids in ``[100, vocab_size)`` (skips special ids)."""
    rng = random.Random(seed)
    return [[rng.randrange(100, vocab_size) for _ in range(input_len)] for _ in range(n)]


def _body(backend: str, ids: List[int], output_len: int) -> tuple:
    if backend == "sgl":
        return "/generate", {"input_ids": ids, "stream": True, "sampling_params": {
            "max_new_tokens": output_len, "temperature": 0.0, "ignore_eos": True}}
    return "/v1/completions", {"model": "default", "prompt": ids, "max_tokens": output_len, "temperature": 0.0,
                               "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}


def _tokens_so_far(backend: str, payload: dict, previous: int) -> int:
    if backend == "sgl":
        return int(payload["meta_info"]["completion_tokens"])
    if payload.get("usage"):
        return int(payload["usage"]["completion_tokens"])
    return previous + (1 if payload.get("choices") and payload["choices"][0].get("text") else 0)


async def send_one(client: httpx.AsyncClient, backend: str, ids: List[int], output_len: int) -> RequestResult:
    """Stream one request and time every chunk."""
    path, body = _body(backend, ids, output_len)
    result = RequestResult(prompt_len=len(ids))
    start = last = time.perf_counter()
    tokens = 0
    try:
        async with client.stream("POST", path, json=body) as res:
            if res.status_code != 200:
                result.error = f"HTTP {res.status_code}: {(await res.aread())[:200]!r}"
                return result
            async for line in res.aiter_lines():
                if not line.startswith("data:") or line.strip() == "data: [DONE]":
                    continue
                now = time.perf_counter()
                new_tokens = _tokens_so_far(backend, json.loads(line[5:]), tokens)
                if new_tokens > tokens:
                    if tokens == 0:
                        result.ttft = now - start
                    else:
                        result.itl.extend([(now - last) / (new_tokens - tokens)] * (new_tokens - tokens))
                    tokens, last = new_tokens, now
        result.latency = time.perf_counter() - start
        result.output_len = tokens
        result.ok = tokens > 0
    except httpx.HTTPError as e:
        result.error = repr(e)
    return result


async def run_benchmark(base_url: str, backend: str, prompts: List[List[int]], output_len: int,
                        request_rate: float, max_concurrency: Optional[int], seed: int,
                        api_key: Optional[str] = None) -> dict:
    """Send every prompt and return the summary dict (see :func:`summarize`)."""
    rng = random.Random(seed)
    limit = asyncio.Semaphore(max_concurrency or len(prompts))
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=max_concurrency or len(prompts))
    async with httpx.AsyncClient(base_url=base_url, timeout=3600, headers=headers, limits=limits) as client:
        async def limited(ids):
            async with limit:
                return await send_one(client, backend, ids, output_len)

        tasks = []
        start = time.perf_counter()
        for ids in prompts:
            tasks.append(asyncio.create_task(limited(ids)))
            if request_rate != float("inf"):
                await asyncio.sleep(rng.expovariate(request_rate))
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - start
    return summarize(results, duration)


def _pcts(values: List[float]) -> dict:
    if not values:
        return {"mean": None, "median": None, "p99": None}
    ordered = sorted(values)
    return {"mean": 1000 * statistics.fmean(ordered), "median": 1000 * statistics.median(ordered),
            "p99": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]}


def summarize(results: List[RequestResult], duration: float) -> dict:
    """Throughputs (per second of wall time) and TTFT / ITL / E2E statistics in milliseconds."""
    done = [r for r in results if r.ok]
    return {
        "completed": len(done), "failed": len(results) - len(done),
        "errors": sorted({r.error for r in results if r.error})[:5],
        "duration_s": duration,
        "request_throughput": len(done) / duration,
        "input_token_throughput": sum(r.prompt_len for r in done) / duration,
        "output_token_throughput": sum(r.output_len for r in done) / duration,
        "ttft_ms": _pcts([r.ttft for r in done]),
        "itl_ms": _pcts([x for r in done for x in r.itl]),
        "e2e_latency_ms": _pcts([r.latency for r in done]),
    }


def main(argv: Optional[List[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", default=None, help="server to benchmark, e.g. http://127.0.0.1:30000")
    parser.add_argument("--launch", default=None, help="command that starts a server (sgl.utils.launch_server_cmd)")
    parser.add_argument("--backend", choices=("sgl", "openai"), default="sgl")
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=16)
    parser.add_argument("--request-rate", type=float, default=float("inf"), help="requests/s (inf = all at once)")
    parser.add_argument("--max-concurrency", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--output-file", default=None, help="append the summary as one JSON line")
    args = parser.parse_args(argv)
    if (args.base_url is None) == (args.launch is None):
        parser.error("give exactly one of --base-url and --launch")

    proc = None
    base_url = args.base_url
    if args.launch:
        from sgl.utils import launch_server_cmd, wait_for_server

        proc, port = launch_server_cmd(args.launch)
        base_url = f"http://127.0.0.1:{port}"
        wait_for_server(base_url, timeout=600, process=proc)
    try:
        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        info = httpx.get(base_url.rstrip("/") + "/get_model_info", headers=headers, timeout=60).json()
        prompts = make_prompts(args.num_prompts, args.input_len, int(info.get("vocab_size", 32000)), args.seed)
        summary = asyncio.run(run_benchmark(base_url.rstrip("/"), args.backend, prompts, args.output_len,
                                            args.request_rate, args.max_concurrency, args.seed, args.api_key))
    finally:
        if proc is not None:
            from sgl.utils import terminate_process

            terminate_process(proc)
    summary["config"] = {k: (str(v) if v == float("inf") else v) for k, v in vars(args).items() if k != "api_key"}
    print(json.dumps(summary, indent=2, default=str))
    if args.output_file:
        with open(args.output_file, "a") as f:
            f.write(json.dumps(summary, default=str) + "\n")
    return summary


if __name__ == "__main__":
    sys.exit(0 if main()["failed"] == 0 else 1)
