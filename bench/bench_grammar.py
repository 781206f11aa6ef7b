"""Constrained-decoding benchmark on the bundled SmolLM2 tokenizer (49152 tokens).

For the SGLang tour's JSON character-sheet regex and the IPv4 regex, measures
the builtin backend's
  * compile time and time to the first mask (cold: nothing cached),
  * grammar time in a full simulated generation (masks + accepts + jump-forward
    + re-tokenization; cold caches, then warm), per token,
  * decode steps (forward passes) without and with jump-forward,
  * the cost of building every state's mask up front (what eager indexes pay),
and, when installed in the same venv, outlines-core's index build time and
xgrammar's compile time for the same regexes.  ``--decode-ref`` also times a
greedy decode step of the real model (transformers, from the converted-model
cache) to put the grammar time per token in proportion.

The generations use :class:`sgl.grammar.simulate.TargetTextLogits` (a model
that writes a fixed, valid answer) and seeded random logits (temperature 1).

Run: ``.venv/bin/python bench/bench_grammar.py [--seeds 5] [--decode-ref]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import regex as regex_mod
import torch

from sgl.grammar import BuiltinGrammarBackend
from sgl.grammar.examples import CHARACTER_REGEX, IPV4_REGEX
from sgl.grammar.simulate import TargetTextLogits, random_logits, simulate_decode
from sgl.models.loader import load_bundled_tokenizer
from sgl.grammar.token_index import TokenIndex
from sgl.grammar.fsm import ByteDFA

HARRY = """{
    "name": "Harry Potter",
    "house": "Gryffindor",
    "blood status": "Half-blood",
    "occupation": "student",
    "wand": {
        "wood": "Holly",
        "core": "Phoenix feather",
        "length": 11.0
    },
    "alive": "Alive",
    "patronus": "Stag",
    "bogart": "Dementor"
}"""
CASES = [("json character", CHARACTER_REGEX, HARRY), ("ipv4", IPV4_REGEX, "192.168.100.254")]


def _ms(s: float) -> str:
    return f"{s * 1e3:.2f} ms"


def bench_builtin(tok, name: str, regex: str, target: str, seeds: int) -> dict:
    assert regex_mod.fullmatch(regex, target)
    out = {}
    backend = BuiltinGrammarBackend(tok, len(tok))  # TokenVocab is memoized per tokenizer
    t0 = time.perf_counter()
    g = backend.compile(regex=regex)
    t1 = time.perf_counter()
    g.fill_vocab_mask(torch.zeros(len(tok), dtype=torch.bool))
    t2 = time.perf_counter()
    out["compile"], out["first_mask"], out["ttfm"] = t1 - t0, t2 - t1, t2 - t0

    runs = {}
    for jump in (False, True):  # cold caches each time: a fresh backend
        be = BuiltinGrammarBackend(tok, len(tok))
        res = simulate_decode(be.compile(regex=regex), tok, be.vocab, TargetTextLogits(be.vocab, target),
                              max_tokens=1000, jump_forward=jump)
        assert res.finished and res.text == target, res.text
        warm = simulate_decode(be.compile(regex=regex), tok, be.vocab, TargetTextLogits(be.vocab, target),
                               max_tokens=1000, jump_forward=jump)
        runs[jump] = (res, warm)
    (off, _), (on, on_warm) = runs[False], runs[True]
    out["steps_off"], out["steps_on"], out["jumps"] = off.steps, on.steps, on.jumps
    out["out_tokens"] = len(off.output_ids)
    out["grammar_cold"], out["grammar_warm"] = on.grammar_s, on_warm.grammar_s
    out["grammar_off_cold"] = off.grammar_s
    out["mask_mean"] = statistics.mean(on.mask_s)
    out["mask_max"] = max(on.mask_s)
    out["mask_warm_mean"] = statistics.mean(on_warm.mask_s)

    be = BuiltinGrammarBackend(tok, len(tok), jump_holdback=False)
    full = simulate_decode(be.compile(regex=regex), tok, be.vocab, TargetTextLogits(be.vocab, target),
                           max_tokens=1000, jump_forward=True)
    assert full.finished and full.text == target
    out["steps_full_jump"] = full.steps

    be = BuiltinGrammarBackend(tok, len(tok))
    rand_time, rand_steps = 0.0, 0
    for seed in range(seeds):
        res = simulate_decode(be.compile(regex=regex), tok, be.vocab, random_logits(len(tok), seed),
                              max_tokens=400, temperature=1.0, seed=seed, jump_forward=True)
        assert res.finished and regex_mod.fullmatch(regex, res.text)
        rand_time += res.grammar_s
        rand_steps += res.steps
    out["random_per_step"] = rand_time / max(rand_steps, 1)

    t0 = time.perf_counter()  # eager: every reachable state's mask
    dfa = ByteDFA(regex)
    n_states = dfa.expand_all()
    index = TokenIndex(backend.vocab, dfa)
    for s in range(1, dfa.n_states):
        index.mask(s)
    out["eager_all"] = time.perf_counter() - t0
    out["dfa_states"] = n_states
    out["char_states"] = int(dfa.char_boundary[: dfa.n_states].sum())
    return out


def bench_outlines(tok, vocab, regex: str):
    """Seconds to build outlines-core's full Index for ``regex`` and for its ASCII
    spelling (outlines-core's \\w / \\d / \\s are Unicode classes, ours are ASCII)."""
    try:
        import outlines_core
    except ImportError:
        return None
    m = {}
    for i, b in enumerate(vocab.token_bytes):
        if b and i not in vocab.eos_token_ids:
            m.setdefault(b, []).append(i)
    voc = outlines_core.Vocabulary(tok.eos_token_id, m)
    times = []
    for rx in (regex, regex.replace(r"[\w\d\s]", r"[a-zA-Z0-9_ \t\n\r\f\v]").replace(r"\d", "[0-9]")):
        t0 = time.perf_counter()
        outlines_core.Index(rx, voc)
        times.append(time.perf_counter() - t0)
    return times


def bench_xgrammar(tok, regex: str):
    try:
        import xgrammar
    except ImportError:
        return None
    t0 = time.perf_counter()
    info = xgrammar.TokenizerInfo.from_huggingface(tok, vocab_size=len(tok), stop_token_ids=[tok.eos_token_id])
    t1 = time.perf_counter()
    compiler = xgrammar.GrammarCompiler(info, max_threads=1, cache_enabled=False)
    t2 = time.perf_counter()
    compiler.compile_regex(regex)
    return t1 - t0, time.perf_counter() - t2


def decode_reference(tok, n_tokens: int = 32):
    """Seconds per greedy decode step of the bundled model (transformers, fp32), or None."""
    from transformers import AutoModelForCausalLM

    from sgl.models.gguf_convert import gguf_cache_dir, is_complete_cache
    from sgl.models.loader import default_model_path

    path = gguf_cache_dir(default_model_path())
    if not is_complete_cache(path):
        return None
    model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=torch.float32).eval()
    ids = tok("Describe Harry Potter as JSON.", return_tensors="pt").input_ids
    with torch.no_grad():
        model.generate(ids, max_new_tokens=4, do_sample=False)
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=n_tokens, min_new_tokens=n_tokens, do_sample=False)
    return (time.perf_counter() - t0) / n_tokens


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5, help="random-logit generations per regex")
    ap.add_argument("--decode-ref", action="store_true", help="also time the real model's decode step")
    ap.add_argument("--no-external", action="store_true", help="skip outlines-core / xgrammar")
    args = ap.parse_args()
    torch.set_num_threads(1)

    t0 = time.perf_counter()
    tok = load_bundled_tokenizer()
    t1 = time.perf_counter()
    backend = BuiltinGrammarBackend(tok, len(tok))
    t2 = time.perf_counter()
    print(f"tokenizer load {t1 - t0:.2f} s; vocabulary byte tables (once per engine) {_ms(t2 - t1)}")
    decode_s = decode_reference(tok) if args.decode_ref else None
    if args.decode_ref:
        print("model decode step (transformers fp32, 1 thread): "
              + (_ms(decode_s) if decode_s else "n/a (no converted model cache)"))

    rows = []
    for name, regex, target in CASES:
        r = bench_builtin(tok, name, regex, target, args.seeds)
        ext_o = "skipped" if args.no_external else bench_outlines(tok, backend.vocab, regex)
        ext_x = "skipped" if args.no_external else bench_xgrammar(tok, regex)
        rows.append((name, r, ext_o, ext_x))

    def line(label, fn):
        print(f"{label:<46}" + "".join(f"{fn(r, o, x):>22}" for _, r, o, x in rows))

    print()
    print(f"{'':<46}" + "".join(f"{n:>22}" for n, *_ in rows))
    line("DFA states (all / at char boundary)", lambda r, o, x: f"{r['dfa_states']} / {r['char_states']}")
    line("compile (cold)", lambda r, o, x: _ms(r["compile"]))
    line("first mask (cold)", lambda r, o, x: _ms(r["first_mask"]))
    line("time to first mask = compile + first mask", lambda r, o, x: _ms(r["ttfm"]))
    line("output tokens (no jump-forward)", lambda r, o, x: str(r["out_tokens"]))
    line("decode steps without jump-forward", lambda r, o, x: str(r["steps_off"]))
    line("decode steps with jump-forward (default)", lambda r, o, x: str(r["steps_on"]))
    line("  forward passes saved", lambda r, o, x: f"{1 - r['steps_on'] / r['steps_off']:.0%}")
    line("  jumps", lambda r, o, x: str(r["jumps"]))
    line("decode steps, jump without last-token hold-back", lambda r, o, x: str(r["steps_full_jump"]))
    line("  forward passes saved", lambda r, o, x: f"{1 - r['steps_full_jump'] / r['steps_off']:.0%}")
    line("grammar time, full generation (cold, jump)", lambda r, o, x: _ms(r["grammar_cold"]))
    line("grammar time, full generation (warm, jump)", lambda r, o, x: _ms(r["grammar_warm"]))
    line("grammar time, full generation (cold, no jump)", lambda r, o, x: _ms(r["grammar_off_cold"]))
    line("grammar time per step (cold, jump)", lambda r, o, x: _ms(r["grammar_cold"] / r["steps_on"]))
    line("mask time per token: mean (cold)", lambda r, o, x: _ms(r["mask_mean"]))
    line("mask time per token: max (cold)", lambda r, o, x: _ms(r["mask_max"]))
    line("mask time per token: mean (warm)", lambda r, o, x: _ms(r["mask_warm_mean"]))
    line(f"grammar per step, random logits T=1 ({args.seeds} gens)", lambda r, o, x: _ms(r["random_per_step"]))
    line("eager: all states' masks (builtin)", lambda r, o, x: _ms(r["eager_all"]))
    def ext(v, i):
        return "not installed" if v is None else v if isinstance(v, str) else _ms(v[i])

    line("outlines-core Index build", lambda r, o, x: ext(o, 0))
    line("outlines-core Index build, ASCII classes", lambda r, o, x: ext(o, 1))
    line("xgrammar TokenizerInfo (once)", lambda r, o, x: ext(x, 0))
    line("xgrammar compile_regex", lambda r, o, x: ext(x, 1))
    if decode_s:
        line("grammar share of decode time (cold, jump)",
             lambda r, o, x: f"{r['grammar_cold'] / (r['grammar_cold'] + r['steps_on'] * decode_s):.1%}")


if __name__ == "__main__":
    main()
