"""Choice scoring shared by the backends that can return prompt logprobs (local engine, RuntimeEndpoint).

For ``select(choices)``: tokenize the prompt and each ``prompt + choice``; the
choice's tokens start where the two token sequences diverge (tokenization may
merge across the boundary). The shared prefix is committed once (a
max_new_tokens=0 request, so the radix cache holds it), then each full
sequence is prefilled with prompt logprobs from its choice's first token, and
``choices_method`` picks (SGLang's three methods, see sgl/lang/choices.py).
"""

from __future__ import annotations

from typing import Callable, List, Sequence

from sgl.backends.choices import ChoicesDecision, ChoicesSamplingMethod, normalized_logprob

# score(input_ids_per_choice, logprob_start_per_choice) -> one /generate result dict per choice
ScoreFn = Callable[[List[List[int]], List[int]], List[dict]]
# prefill(input_ids_list, logprob_start_len) -> one /generate result dict per sequence
PrefillFn = Callable[[List[List[int]], int], List[dict]]


def score_by_start(prefill: PrefillFn, input_ids: List[List[int]], starts: List[int]) -> List[dict]:
    """Prefill every sequence (max_new_tokens=0) with prompt logprobs from its own start position,
    one batched request per distinct start; results come back in input order."""
    outs: List[dict] = [{}] * len(input_ids)
    for start in sorted(set(starts)):
        idx = [i for i, s in enumerate(starts) if s == start]
        for i, r in zip(idx, prefill([input_ids[i] for i in idx], start)):
            outs[i] = r
    return outs


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def select_by_prompt_logprobs(prefix_ids: List[int], full_ids: List[List[int]], choices: Sequence[str],
                              choices_method: ChoicesSamplingMethod, cache_prefix: Callable[[List[int]], None],
                              score: ScoreFn) -> ChoicesDecision:
    """Score ``choices`` given the prompt's tokens and each ``prompt + choice``'s tokens.

    Raises:
        ValueError: a choice that adds no tokens to the prompt.
    """
    starts = [common_prefix_len(prefix_ids, f) for f in full_ids]
    for c, f, k in zip(choices, full_ids, starts):
        if k >= len(f):
            raise ValueError(f"select(): choice {c!r} adds no tokens to the prompt")
    shared = min(starts)
    if shared > 0:
        cache_prefix(prefix_ids[:shared])
    outs = score(full_ids, starts)
    input_lps = [o["meta_info"]["input_token_logprobs"] for o in outs]
    output_lps = [o["meta_info"].get("output_token_logprobs", []) for o in outs]
    unconditional = None
    if choices_method.requires_unconditional_logprobs:
        alone = [f[k:] for f, k in zip(full_ids, starts)]
        unconditional = [o["meta_info"]["input_token_logprobs"] for o in score(alone, [0] * len(alone))]
    return choices_method(choices=list(choices), normalized_prompt_logprobs=[normalized_logprob(x) for x in input_lps],
                          input_token_logprobs=input_lps, output_token_logprobs=output_lps,
                          unconditional_token_logprobs=unconditional)
