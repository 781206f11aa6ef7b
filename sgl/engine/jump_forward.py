"""Jump-forward decoding on the compressed FSM (Zheng et al. 2024, "SGLang: Efficient Execution of
Structured Language Model Programs", §4.2), in a form whose greedy output equals plain constrained decoding.

When the grammar's DFA admits a single path from the current state (the
compressed FSM's singular edge), its text S is forced. S is tokenized once,
canonically (``tokenizer.encode(S)``), giving tokens T, and:

- with jump-forward on, T is appended at once and run through the model in
  the next extend together with the last sampled token (one forward pass
  instead of ``len(T)``);
- with jump-forward off, T is queued and the sampler's mask allows exactly
  ``T[0]``, then ``T[1]``, ... one decode step each.

Both modes therefore feed the model the same tokens and produce identical
greedy outputs; jump-forward only saves forward passes. Forced text is
tokenized on its own (the previous tokens are kept, never re-tokenized), so
the KV of everything already computed stays valid. Requests that return
logprobs step through forced tokens one at a time (as SGLang does), so every
output token has its logprob.
"""

from __future__ import annotations

from typing import List, Optional

from sgl.engine.req import Req


def forced_token_ids(tokenizer, text: str) -> Optional[List[int]]:
    """Canonical token ids of ``text``, or None when the tokenizer does not round-trip it
    (e.g. a SentencePiece tokenizer adding a prefix space); then nothing is forced."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if not ids or tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False) != text:
        return None
    return list(ids)


class JumpForward:
    """Per-engine jump-forward policy (``grammar.jump_forward``), called by the scheduler thread."""

    def __init__(self, tokenizer, enabled: bool):
        self.tokenizer = tokenizer
        self.enabled = enabled

    def start(self, r: Req) -> None:
        """Before the first step: a grammar that forces text from its start state."""
        forced = self._forced(r)
        if forced:
            r.detokenizer.add_tokens(forced)  # jumped: their text is part of the output

    def after_token(self, r: Req, token_id: int) -> List[int]:
        """After ``token_id`` was sampled and accepted: consume a queued forced token, or find the
        next forced run. Returns the tokens appended by a jump (already in ``r.output_ids``)."""
        if r.forced_tokens:
            expected = r.forced_tokens.pop(0)
            if expected != token_id:
                raise RuntimeError(f"request {r.rid}: forced token {expected} but sampled {token_id}")
            return []
        return self._forced(r)

    def _forced(self, r: Req) -> List[int]:
        g = r.grammar
        if g is None or g.is_terminated():
            return []
        text = g.try_jump_forward()
        ids = forced_token_ids(self.tokenizer, text) if text else None
        if not ids:
            return []
        room = r.sampling_params.max_new_tokens - len(r.output_ids)
        if not self.enabled or r.logprob.enabled or len(ids) > room:
            r.forced_tokens = ids  # one decode step per forced token (plain constrained decoding)
            return []
        g.accept_string(text)
        r.output_ids.extend(ids)
        return ids
