"""SGLang's frontend-language tour, run in-process on the bundled model.

``python -m sgl.launch +experiment=frontend_tour [experiment.max_tokens_cap=64] ...``

Every program of SGLang's "Frontend Language" tutorial, written as there
(``@function``, ``gen``, roles, ``fork``, ``regex``, ``run_batch``,
streaming, ``assistant_begin/end``, ``with s.user()``), run on the local
engine backend.  Two deliberate knobs: ``max_tokens_cap`` bounds every
``max_tokens`` of the tutorial (512 on a 2-core CPU takes minutes) and
``temperature`` is passed to every run (0 makes the output reproducible).
The regex cells need a working grammar backend; when the engine cannot
compile a regex yet they print why they are skipped, never a made-up result.
A summary (requests, prompt / cached / generated tokens, cache hit rate,
wall time) closes the tour.
"""

from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional, Tuple

from sgl.lang import (
    assistant,
    assistant_begin,
    assistant_end,
    function,
    gen,
    print_highlight,
    set_default_backend,
    system,
    user,
)

from sgl.grammar.examples import CHARACTER_REGEX  # the tour's character_regex

IP_REGEX = r"((25[0-5]|2[0-4]\d|[01]?\d\d?).){3}(25[0-5]|2[0-4]\d|[01]?\d\d?)"


def grammar_unavailable_reason(engine) -> Optional[str]:
    """None when the engine can decode under a regex; otherwise why not (the probe's error)."""
    try:
        engine.generate(prompt="a", sampling_params={"max_new_tokens": 1, "regex": "(a|b)"})
        return None
    except Exception as e:  # ImportError / NotImplementedError / ValueError from the grammar layer
        return f"{type(e).__name__}: {e}"


def build_cells(cap: Callable[[int], int], temperature: float, grammar_reason: Optional[str]):
    """The tutorial's cells as (title, callable) pairs; ``cap`` bounds max_tokens."""
    run_kw = {"temperature": temperature, "max_new_tokens": cap(128)}

    @function
    def basic_qa(s, question):
        s += system("You are a helpful assistant than can answer questions.")
        s += user(question)
        s += assistant(gen("answer", max_tokens=cap(512)))

    def cell_basic():
        state = basic_qa("List 3 countries and their capitals.", **run_kw)
        print_highlight(state["answer"])

    @function
    def multi_turn_qa(s):
        s += system("You are a helpful assistant than can answer questions.")
        s += user("Please give me a list of 3 countries and their capitals.")
        s += assistant(gen("first_answer", max_tokens=cap(512)))
        s += user("Please give me another list of 3 countries and their capitals.")
        s += assistant(gen("second_answer", max_tokens=cap(512)))
        return s

    def cell_multi_turn():
        state = multi_turn_qa(**run_kw)
        print_highlight(state["first_answer"])
        print_highlight(state["second_answer"])

    @function
    def tool_use(s, question):
        s += assistant(
            "To answer this question: "
            + question
            + ". I need to use a "
            + gen("tool", choices=["calculator", "search engine"])
            + ". "
        )
        if s["tool"] == "calculator":
            s += assistant("The math expression is: " + gen("expression"))
        elif s["tool"] == "search engine":
            s += assistant("The key word to search is: " + gen("word"))

    def cell_tool_use():
        state = tool_use("What is 2 * 2?", **run_kw)
        print_highlight(state["tool"])
        print_highlight(state["expression"] if state["tool"] == "calculator" else state["word"])
        scores = state.get_meta_info("tool")["normalized_prompt_logprobs"]
        print(f"  (choice scores, mean logprob per token: {dict(zip(['calculator', 'search engine'], scores))})")

    @function
    def tip_suggestion(s):
        s += assistant(
            "Here are two tips for staying healthy: "
            "1. Balanced Diet. 2. Regular Exercise.\n\n"
        )
        forks = s.fork(2)
        for i, f in enumerate(forks):
            f += assistant(
                f"Now, expand tip {i+1} into a paragraph:\n"
                + gen("detailed_tip", max_tokens=cap(256), stop="\n\n")
            )
        s += assistant("Tip 1:" + forks[0]["detailed_tip"] + "\n")
        s += assistant("Tip 2:" + forks[1]["detailed_tip"] + "\n")
        s += assistant("To summarize the above two tips, I can say:\n" + gen("summary", max_tokens=cap(512)))
        s["fork_cached_tokens"] = [f.get_meta_info("detailed_tip")["cached_tokens"] for f in forks]

    def cell_parallelism():
        state = tip_suggestion(**run_kw)
        print_highlight(state["summary"])
        print(f"  (cached prompt tokens of the two forks: {state['fork_cached_tokens']})")

    @function
    def regular_expression_gen(s):
        s += user("What is the IP address of the Google DNS servers?")
        s += assistant(gen("answer", temperature=0, regex=IP_REGEX))

    def cell_regex_ip():
        state = regular_expression_gen(**run_kw)
        print_highlight(state["answer"])

    @function
    def character_gen(s, name):
        s += user(f"{name} is a character in Harry Potter. Please fill in the following information about this character.")
        s += assistant(gen("json_output", max_tokens=256, regex=CHARACTER_REGEX))

    def cell_regex_json():
        # The regex fixes the whole JSON layout, so its max_tokens is not capped (a cut-off JSON would not match).
        state = character_gen("Harry Potter", **run_kw)
        print_highlight(state["json_output"])

    @function
    def text_qa(s, question):
        s += user(question)
        s += assistant(gen("answer", stop="\n"))

    def cell_batching():
        states = text_qa.run_batch(
            [
                {"question": "What is the capital of the United Kingdom?"},
                {"question": "What is the capital of France?"},
                {"question": "What is the capital of Japan?"},
            ],
            progress_bar=True,
            **run_kw,
        )
        for i, state in enumerate(states):
            print_highlight(f"Answer {i+1}: {states[i]['answer']}")

    def cell_streaming():
        state = text_qa.run(question="What is the capital of France?", stream=True, **run_kw)
        pieces = []
        for out in state.text_iter():
            pieces.append(out)
            print(out, end="", flush=True)
        print()
        print(f"  ({len(pieces)} streamed pieces; concatenation equals the final text: {''.join(pieces) == state.text()})")

    @function
    def chat_example(s):
        s += system("You are a helpful assistant.")
        # Same as: s += s.system("You are a helpful assistant.")
        with s.user():
            s += "Question: What is the capital of France?"
        s += assistant_begin()
        s += "Answer: " + gen("answer", max_tokens=cap(100), stop="\n")
        s += assistant_end()

    def cell_complex():
        state = chat_example(**run_kw)
        print_highlight(state["answer"])

    def needs_grammar(fn):
        def wrapped():
            if grammar_reason is not None:
                print(f"SKIPPED: regex-constrained decoding is not available in this engine yet ({grammar_reason})")
                return "skipped"
            return fn()
        return wrapped

    return [
        ("Basic usage", cell_basic),
        ("Multi-turn dialog", cell_multi_turn),
        ("Control flow (choices)", cell_tool_use),
        ("Parallelism (fork)", cell_parallelism),
        ("Constrained decoding: IP address regex", needs_grammar(cell_regex_ip)),
        ("Constrained decoding: JSON character regex", needs_grammar(cell_regex_json)),
        ("Batching (run_batch)", cell_batching),
        ("Streaming", cell_streaming),
        ("Complex prompts (role begin/end, with s.user())", cell_complex),
    ]


def run_tour(backend, max_tokens_cap: int = 512, temperature: float = 0.0) -> Dict[str, object]:
    """Run every cell on ``backend`` (an EngineBackend); returns the summary dict.

    Raises:
        whatever a cell raises (a failing program fails the tour).
    """
    set_default_backend(backend)
    backend.reset_stats()
    cap = lambda n: min(n, int(max_tokens_cap))  # noqa: E731
    reason = grammar_unavailable_reason(backend.engine)
    backend.reset_stats()  # do not count the probe
    results: List[Tuple[str, str, float]] = []
    t0 = time.perf_counter()
    for title, cell in build_cells(cap, temperature, reason):
        print(f"\n{'=' * 12} {title} {'=' * 12}", flush=True)
        t = time.perf_counter()
        status = cell() or "ok"
        results.append((title, status, time.perf_counter() - t))
    wall = time.perf_counter() - t0
    stats = backend.stats()
    print(f"\n{'=' * 12} Summary {'=' * 12}")
    for title, status, secs in results:
        print(f"  {status:8s} {secs:7.2f} s  {title}")
    print(f"requests: {stats['requests']}  prompt tokens: {stats['prompt_tokens']}  "
          f"cached tokens: {stats['cached_tokens']}  generated tokens: {stats['completion_tokens']}")
    print(f"cache hit rate: {100 * stats['cache_hit_rate']:.1f}%  wall time: {wall:.2f} s")
    return {**stats, "wall_time_s": wall, "cells": results}


def main(cfg) -> None:
    """Entry point for ``python -m sgl.launch +experiment=frontend_tour``."""
    from sgl.backends.engine_backend import EngineBackend
    from sgl.engine.engine import Engine

    exp = cfg.experiment or {}
    engine = Engine(config=cfg)
    try:
        backend = EngineBackend(engine=engine, chat_template=exp.get("chat_template"))
        run_tour(backend, max_tokens_cap=int(exp.get("max_tokens_cap", 512)),
                 temperature=float(exp.get("temperature", 0.0)))
    finally:
        engine.shutdown()
