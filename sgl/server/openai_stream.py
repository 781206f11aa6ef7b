"""Turning cumulative engine stream chunks into OpenAI streaming deltas.

The engine streams ``{"text": cumulative_text, "meta_info": {...}}``. OpenAI
clients want, per choice ``index``, only the new text (and the logprobs of the
new tokens), a chunk carrying ``finish_reason`` at the end, and optionally a
final chunk with ``usage`` and no choices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ChoiceProgress:
    """What has been sent so far for one choice of a streamed response."""

    sent_chars: int = 0
    sent_logprobs: int = 0
    finished: bool = False
    last_meta: dict = field(default_factory=dict)

    def text_delta(self, chunk: dict) -> str:
        """New text since the previous chunk (the engine's text is cumulative)."""
        text = chunk.get("text", "")
        delta = text[self.sent_chars:]
        self.sent_chars = len(text)
        return delta

    def logprob_delta(self, meta: dict) -> tuple[list, list | None]:
        """New ``output_token_logprobs`` triples and their ``output_top_logprobs``.

        Works whether the engine reports logprobs cumulatively (list length ==
        completion_tokens so far) or only for the tokens of this chunk.
        """
        tokens = list(meta.get("output_token_logprobs") or [])
        tops = meta.get("output_top_logprobs")
        completion = int(meta.get("completion_tokens") or 0)
        start = self.sent_logprobs if len(tokens) == completion and len(tokens) >= self.sent_logprobs else 0
        new_tokens = tokens[start:]
        new_tops = list(tops[start:]) if tops is not None else None
        self.sent_logprobs = start + len(new_tokens)
        return new_tokens, new_tops


def chunk_envelope(rid: str, obj: str, created: int, model: str, choices: list, usage: Any = None) -> dict:
    """One streamed chunk object (``chat.completion.chunk`` or ``text_completion``)."""
    out = {"id": rid, "object": obj, "created": created, "model": model, "choices": choices}
    if usage is not None:
        out["usage"] = usage
    return out
