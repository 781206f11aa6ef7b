"""Incremental detokenization for streaming.

Algorithm: vLLM's ``detokenize_incrementally`` (also SGLang's
``surr_offset``/``read_offset`` in its DetokenizerManager). Two offsets into
the token ids: ``prefix_offset`` .. ``read_offset`` is a window of already
emitted tokens decoded again as left context (so tokenizers that depend on
it, e.g. SentencePiece's leading-space rule, decode correctly), and
``read_offset`` .. end are the tokens not yet emitted. Each step decodes
``ids[prefix_offset:]`` and emits what extends past the decoded context,
unless it ends in U+FFFD, which means a multi-byte UTF-8 character is split
across tokens (byte-level BPE): then nothing is emitted until a later token
completes it.
"""

from __future__ import annotations

from typing import Any, List, Sequence

#: Prompt tokens kept as left context (SGLang's INIT_INCREMENTAL_DETOKENIZATION_OFFSET).
PROMPT_CONTEXT_TOKENS = 5
REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    """Turns a growing list of output token ids into text deltas.

    Args:
        tokenizer: a HuggingFace tokenizer (anything with ``decode``).
        skip_special_tokens: drop special tokens' text (SGLang default True).
        spaces_between_special_tokens: passed to ``decode`` (only slow
            tokenizers use it).
        prompt_ids: optional prompt; its last few tokens are decoded as left
            context (never emitted), so the first output token's leading space
            comes out as it would after the prompt. Without it, the
            concatenated deltas equal ``tokenizer.decode(output_ids)``.

    Attributes:
        text: all text emitted so far (the concatenation of the deltas).
        output_ids: all output token ids added so far.
    """

    def __init__(
        self,
        tokenizer: Any,
        skip_special_tokens: bool = True,
        spaces_between_special_tokens: bool = True,
        prompt_ids: Sequence[int] = (),
    ):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.spaces_between_special_tokens = spaces_between_special_tokens
        context = list(prompt_ids)[-PROMPT_CONTEXT_TOKENS:] if prompt_ids else []
        self._n_context = len(context)
        self._ids: List[int] = context
        self.prefix_offset = 0
        self.read_offset = len(context)
        self.text = ""

    @property
    def output_ids(self) -> List[int]:
        return self._ids[self._n_context:]

    def _decode(self, ids: Sequence[int]) -> str:
        if not ids:
            return ""
        return self.tokenizer.decode(
            list(ids),
            skip_special_tokens=self.skip_special_tokens,
            spaces_between_special_tokens=self.spaces_between_special_tokens,
        )

    def add_tokens(self, token_ids: Sequence[int]) -> str:
        """Append new output tokens; return the newly complete text (maybe "").

        A trailing partial UTF-8 character is held back until completed (or
        until :meth:`flush`).
        """
        self._ids.extend(int(t) for t in token_ids)
        prefix_text = self._decode(self._ids[self.prefix_offset:self.read_offset])
        new_text = self._decode(self._ids[self.prefix_offset:])
        if len(new_text) <= len(prefix_text) or new_text.endswith(REPLACEMENT_CHAR):
            return ""
        delta = new_text[len(prefix_text):]
        self.prefix_offset = self.read_offset
        self.read_offset = len(self._ids)
        self.text += delta
        return delta

    def flush(self) -> str:
        """Emit whatever is held back, U+FFFD included (call when the request
        finishes); afterwards ``text`` equals the full decode of the output."""
        prefix_text = self._decode(self._ids[self.prefix_offset:self.read_offset])
        new_text = self._decode(self._ids[self.prefix_offset:])
        delta = new_text[len(prefix_text):] if len(new_text) > len(prefix_text) else ""
        if self.read_offset == len(self._ids):
            return ""
        self.prefix_offset = self.read_offset
        self.read_offset = len(self._ids)
        self.text += delta
        return delta
