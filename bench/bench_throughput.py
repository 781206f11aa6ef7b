"""Decode throughput of sgl vs transformers' generate, and radix vs none on a shared-prefix workload.

    python bench/bench_throughput.py [--batches 1 8 32] [--new-tokens 64] [--skip-hf] [--skip-ablation]

Prints a table with medians over --repeats runs and the ratios, all measured in
this run on the bundled SmolLM2-135M-Instruct (fp32, CPU), the same way for both
sides: each request generates exactly --new-tokens tokens (sgl from an empty
prefix cache); decode tok/s is ``bs * (new_tokens - 1)`` over the time of that
generate minus the time of a 1-token generate (prefill and first token cancel),
end-to-end tok/s is ``bs * new_tokens`` over the generate's wall time.
transformers runs in a child process, so the two never share a process, and the
two sides take turns (one transformers measurement, one sgl measurement, ...), so
a busier or quieter spell of a shared machine falls on both; "paired ratios" is
the range of the decode ratios of those pairs.
At batch 1 a second table shows what each single-token optimisation adds:
the eager model, the torch.compile'd path over float32 weights, and the
default, which reads the GGUF's own quantized blocks (the same weights;
sgl/models/gguf_blocks.py) while transformers reads their float32 copy.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

import torch

import sgl

QUESTIONS = ["What is the capital of France?", "Give me a tip for sleeping well.", "Describe the sea.",
             "What is a prime number?", "Name a famous painter.", "How do plants grow?",
             "What is gravity?", "Tell me about cats."]

SYSTEM = ("You are a meticulous assistant for a large public library. " * 6 +
          "Follow these rules: answer briefly, cite the shelf, never invent books, be kind. " * 8)


def chat(tok, q, system=None):
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": q}]
    return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


def sgl_generate_s(engine, prompts, new_tokens):
    """Wall seconds of one ``generate`` of ``new_tokens`` per prompt from an empty prefix cache
    (prefill included, as in transformers' ``generate``)."""
    engine.flush_cache()
    t0 = time.perf_counter()
    outs = engine.generate(prompts, {"temperature": 0, "max_new_tokens": new_tokens, "ignore_eos": True})
    dt = time.perf_counter() - t0
    assert all(o["meta_info"]["completion_tokens"] == new_tokens for o in outs)
    return dt


def hf_generate_s(model, tok, prompts, new_tokens):
    """Wall seconds of transformers' greedy ``generate`` of exactly ``new_tokens`` per prompt."""
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    enc = tok(prompts, return_tensors="pt", padding=True)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    dt = time.perf_counter() - t0
    assert out.shape[1] - enc["input_ids"].shape[1] == new_tokens
    return dt


def throughputs(generate_s, bs, new_tokens):
    """(decode tok/s, end-to-end tok/s) of one measurement: ``generate_s(n)`` is timed for
    ``new_tokens`` and for 1 token, and decode = ``bs * (new_tokens - 1)`` tokens over the
    difference (the prefill and the first token cancel); end-to-end = all tokens over the first."""
    t_full, t_first = generate_s(new_tokens), generate_s(1)
    return bs * (new_tokens - 1) / (t_full - t_first), bs * new_tokens / t_full


_HF: dict = {}


def hf_load(model_dir):
    """Worker initializer: load transformers' model and tokenizer once in the child process."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _HF["tok"] = AutoTokenizer.from_pretrained(model_dir)
    _HF["model"] = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def hf_run(bs, new_tokens):
    """:func:`throughputs` of transformers' ``generate`` at batch ``bs`` (in the worker process)."""
    tok = _HF["tok"]
    prompts = batch_prompts(tok, bs)
    return throughputs(lambda n: hf_generate_s(_HF["model"], tok, prompts, n), bs, new_tokens)


def batch_prompts(tok, bs):
    return [chat(tok, QUESTIONS[i % len(QUESTIONS)] + f" #{i}") for i in range(bs)]


def shared_prefix(engine, n=32, new_tokens=16):
    tok = engine.tokenizer
    prompts = [chat(tok, f"{QUESTIONS[i % len(QUESTIONS)]} (request {i})", SYSTEM) for i in range(n)]
    engine.flush_cache()
    t0 = time.perf_counter()
    outs = engine.generate(prompts, {"temperature": 0, "max_new_tokens": new_tokens, "ignore_eos": True})
    dt = time.perf_counter() - t0
    prompt = sum(o["meta_info"]["prompt_tokens"] for o in outs)
    cached = sum(o["meta_info"]["cached_tokens"] for o in outs)
    gen = sum(o["meta_info"]["completion_tokens"] for o in outs)
    return {"hit": cached / prompt, "req_s": n / dt, "tok_s": (prompt + gen) / dt, "s": dt}


def batch1_ablation(prompt, args, hf_tps):
    """Batch-1 decode tok/s of the eager model, the torch.compile'd path on float32 weights, and the
    default (compiled path reading the GGUF's blocks), each against the same transformers figure.
    One engine at a time: an idle engine's OpenMP team would slow the measured one."""
    rows = {}
    for label, kw in (("eager, fp32 weights", dict(enable_torch_compile=False)),
                      ("torch.compile, fp32 weights", dict(gguf_block_gemv=False)),
                      ("torch.compile, GGUF blocks (default)", {})):
        other = sgl.Engine(log_interval=0, attention=args.attention, **kw)
        rows[label] = statistics.median(
            throughputs(lambda n: sgl_generate_s(other, [prompt], n), 1, args.new_tokens)[0]
            for _ in range(args.repeats))
        other.shutdown()
    print()
    print("batch 1 ablation (model.enable_torch_compile, model.gguf_block_gemv)")
    print(f"{'single-token path':>38} | {'tok/s':>6} | {'vs hf':>6}")
    for label, tps in rows.items():
        print(f"{label:>38} | {tps:>6.1f} | {tps / hf_tps:>6.2f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--skip-ablation", action="store_true", help="skip the batch-1 ablation table")
    ap.add_argument("--attention", default="torch")
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())

    engine = sgl.Engine(log_interval=0, attention=args.attention)
    tok = engine.tokenizer
    pool = None
    if not args.skip_hf:  # transformers lives in a child process, so the two never share an OpenMP team
        pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=hf_load,
                                   initargs=(engine.loaded.model_dir,))
    nan = (float("nan"), float("nan"))
    hf = (lambda bs, n: pool.submit(hf_run, bs, n).result()) if pool else (lambda bs, n: nan)
    ref = {}
    print(f"{'':>5} | {'decode tok/s (prefill excluded)':^40} | {'end to end tok/s':^26}")
    print(f"{'batch':>5} | {'sgl':>8} | {'hf':>7} | {'ratio':>5} | {'paired ratios':>11} | "
          f"{'sgl':>7} | {'hf':>7} | {'ratio':>5}")
    for bs in args.batches:
        prompts = batch_prompts(tok, bs)
        hf(bs, 4)  # warm-ups, not counted
        sgl_generate_s(engine, prompts, 4)
        pairs = [(hf(bs, args.new_tokens), throughputs(lambda n: sgl_generate_s(engine, prompts, n), bs,
                                                        args.new_tokens))
                 for _ in range(args.repeats)]  # alternated, so both sides see the same machine
        med = lambda side, i: statistics.median(p[side][i] for p in pairs)  # noqa: E731
        ref[bs] = med(0, 0)
        ratios = sorted(o[0] / h[0] for h, o in pairs)
        print(f"{bs:>5} | {med(1, 0):>8.1f} | {med(0, 0):>7.1f} | {med(1, 0) / med(0, 0):>5.2f} | "
              f"{ratios[0]:>4.2f} - {ratios[-1]:<4.2f} | {med(1, 1):>7.1f} | {med(0, 1):>7.1f} | "
              f"{med(1, 1) / med(0, 1):>5.2f}")
    if pool:
        pool.shutdown()

    radix = shared_prefix(engine)
    engine.shutdown()
    results = {"radix": radix}
    for name in ("lru", "none"):
        other = sgl.Engine(cache=name, log_interval=0, attention=args.attention)
        results[name] = shared_prefix(other)
        other.shutdown()
    none = results["none"]
    print()
    print("shared system prompt, 32 requests x 16 new tokens")
    print(f"{'cache':>6} | {'hit rate':>8} | {'req/s':>6} | {'tok/s':>8} | {'wall s':>6}")
    for name, r in results.items():
        print(f"{name:>6} | {100 * r['hit']:>7.1f}% | {r['req_s']:>6.2f} | {r['tok_s']:>8.1f} | {r['s']:>6.2f}")
    print(f"radix / none throughput: {radix['req_s'] / none['req_s']:.2f}x")
    if 1 in args.batches and not args.skip_ablation:
        batch1_ablation(chat(tok, QUESTIONS[0] + " #0"), args, ref[1])


if __name__ == "__main__":
    main()
