"""A model-free constrained decode loop, for grammar tests and benchmarks.

It drives a :class:`Grammar` exactly as the engine does (mask -> sample ->
accept -> optional jump-forward with boundary re-tokenization) with logits
from a plain function, and counts forward passes: one per sampled token; a
jump-forward's new tokens are prefilled by the pass that samples the next
token, so they cost no extra pass.

Two logit models are provided: :func:`random_logits` (seeded noise, any
regex) and :class:`TargetTextLogits` (prefers tokens that continue a given
target text, longest first -- a stand-in for a model that "knows" the
answer, under which jump-forward on and off must produce the same text).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import numpy as np
import torch

from sgl.grammar.base import Grammar
from sgl.grammar.jump_forward import jump_forward_retokenize
from sgl.grammar.vocab import TokenVocab

LogitsFn = Callable[[List[int], bytes], torch.Tensor]


@dataclass
class SimResult:
    """Outcome of :func:`simulate_decode`.

    Attributes:
        output_ids: generated ids (after re-tokenizations; EOS not included).
        text_bytes: UTF-8 bytes of the output.
        finished: True if EOS was sampled or the grammar terminated; False if cut by max_tokens.
        steps: forward passes (= sampled tokens, EOS included).
        jumps: jump-forwards applied; jump_chars: characters they appended.
        grammar_s: seconds in grammar work (masks, accepts, jumps, re-tokenization).
        mask_s: per-step seconds of ``fill_vocab_mask``.
    """

    output_ids: List[int]
    text_bytes: bytes
    finished: bool
    steps: int
    jumps: int = 0
    jump_chars: int = 0
    grammar_s: float = 0.0
    mask_s: List[float] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The output text (an incomplete trailing character of a cut output is dropped)."""
        return self.text_bytes.decode("utf-8", errors="ignore" if not self.finished else "strict")


def random_logits(vocab_size: int, seed: int) -> LogitsFn:
    """Seeded standard-normal logits ``[vocab_size]`` (float32), fresh each step."""
    g = torch.Generator().manual_seed(seed)
    return lambda ids, text: torch.randn(vocab_size, generator=g)


class TargetTextLogits:
    """Logits that continue ``target`` (bytes): tokens that are a prefix of the
    remaining target score ``10 + len``; EOS scores 1000 once it is all written;
    everything else gets small seeded noise."""

    def __init__(self, vocab: TokenVocab, target: str, seed: int = 0):
        self.vocab, self.target = vocab, target.encode("utf-8")
        self.g = torch.Generator().manual_seed(seed)

    def __call__(self, ids: List[int], text: bytes) -> torch.Tensor:
        v = self.vocab
        logits = torch.rand(v.vocab_size, generator=self.g).numpy()
        if not self.target.startswith(text):
            return torch.from_numpy(logits)
        rest = self.target[len(text):]
        if not rest:
            logits[sorted(v.eos_token_ids)] = 1000.0
            return torch.from_numpy(logits)
        ok = (v.lengths > 0) & (v.lengths <= len(rest))
        for j in range(min(len(rest), v.columns.shape[0])):
            ok &= (v.columns[j] == rest[j]) | (v.lengths <= j)
        logits[ok] += 10.0 + v.lengths[ok]
        return torch.from_numpy(logits)


def simulate_decode(grammar: Grammar, tokenizer, vocab: TokenVocab, logits_fn: LogitsFn,
                    max_tokens: int = 128, temperature: float = 0.0, seed: int = 0,
                    jump_forward: bool = False) -> SimResult:
    """Decode until EOS / termination / ``max_tokens`` under ``grammar``'s masks.

    Args:
        grammar: a fresh matcher (advanced in place).
        tokenizer: HF tokenizer (used only for jump-forward re-tokenization).
        vocab: its :class:`TokenVocab` (for bytes and EOS ids).
        logits_fn: ``(output_ids, text_bytes) -> float [vocab_size]``.
        temperature: 0 = greedy, else softmax sampling with ``seed``.
        jump_forward: apply compressed-FSM jumps.

    Raises:
        AssertionError: the mask allowed nothing (a grammar bug).
    """
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(vocab.vocab_size, dtype=torch.bool)
    ids: List[int] = []
    text = b""
    res = SimResult([], b"", False, 0)
    while len(ids) < max_tokens:
        if grammar.is_terminated():
            res.finished = True
            break
        logits = logits_fn(ids, text)
        res.steps += 1
        t0 = time.perf_counter()
        grammar.fill_vocab_mask(mask)
        t1 = time.perf_counter()
        res.mask_s.append(t1 - t0)
        assert bool(mask.any()), "grammar allowed no token"
        x = logits.float().masked_fill(~mask, float("-inf"))
        if temperature == 0.0:
            tok = int(torch.argmax(x))
        else:
            tok = int(torch.multinomial(torch.softmax(x / temperature, -1), 1, generator=gen))
        t2 = time.perf_counter()
        grammar.accept_token(tok)
        res.grammar_s += time.perf_counter() - t2 + (t1 - t0)
        if tok in vocab.eos_token_ids:
            res.finished = True
            break
        ids.append(tok)
        text += vocab.token_bytes[tok]
        if jump_forward:
            t3 = time.perf_counter()
            s = grammar.try_jump_forward()
            if s is not None:
                keep, tail = jump_forward_retokenize(tokenizer, ids, s)
                if tail:
                    grammar.accept_string(s)
                    ids = ids[:keep] + tail
                    text += s.encode("utf-8")
                    res.jumps += 1
                    res.jump_chars += len(s)
            res.grammar_s += time.perf_counter() - t3
    res.output_ids, res.text_bytes = ids, text
    if not res.finished and grammar.is_terminated():
        res.finished = True
    return res


def sample_match(grammar: Grammar, vocab: TokenVocab, seed: int, stop_prob: float = 0.3,
                 max_bytes: int = 512) -> Optional[str]:
    """A random full match of the grammar's regex (builtin backend only): a byte-level
    random walk that stops at accepting states with ``stop_prob``.  None if it runs
    past ``max_bytes``."""
    rng = np.random.default_rng(seed)
    g = grammar.copy()
    dfa = g.compiled.dfa  # type: ignore[attr-defined]
    state, out = g.state, bytearray()  # type: ignore[attr-defined]
    while len(out) < max_bytes:
        deg = dfa.degree(state)
        if dfa.accepting[state] and (deg == 0 or rng.random() < stop_prob):
            return out.decode("utf-8")
        allowed = np.flatnonzero(dfa.transitions[state] != dfa.dead)
        b = int(rng.choice(allowed))
        out.append(b)
        state = int(dfa.transitions[state, b])
    return None
