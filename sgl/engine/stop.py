"""Stop conditions of one request and the finish reason it reports.

Checks (vLLM's ``StopChecker`` order; SGLang reports the same reasons):
nothing stops a request below ``min_new_tokens`` (the sampler also bans
EOS/stop tokens there, see ``SamplingBatchInfo.min_tokens_ban``); then the
last token being EOS (unless ``ignore_eos``) or in ``stop_token_ids`` ->
``stop``/matched id; a stop string completed by the new text -> ``stop``/
matched string; else reaching ``max_new_tokens`` -> ``length``.

Stop strings are searched only where new text could have completed them
(from ``len(s) - 1`` characters before the new text), so a string split
across tokens is found once its last piece arrives, at ``O(len(delta) +
max_stop_len)`` cost per step. ``stop_regex`` patterns (unbounded length) are
matched over the whole text and must end inside the new text; they are
trimmed like stop strings, but a partial regex match is not held back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Union

from sgl.engine.sampling.sampling_params import SamplingParams

_TYPES = ("stop", "length", "abort")


@dataclass(frozen=True)
class FinishReason:
    """Why a request finished, in SGLang's meta_info ``finish_reason`` format.

    Attributes:
        type: "stop" | "length" | "abort".
        matched: the stop token id (int) or stop string (str), for "stop"
            (None when a grammar terminated the request).
        length: the token budget reached, for "length".
        message: the reason, for "abort".
    """

    type: str
    matched: Union[int, str, None] = None
    length: Optional[int] = None
    message: Optional[str] = None

    def __post_init__(self):
        if self.type not in _TYPES:
            raise ValueError(f"FinishReason.type must be one of {_TYPES}, got {self.type!r}")

    @classmethod
    def stop(cls, matched: Union[int, str, None]) -> "FinishReason":
        return cls("stop", matched=matched)

    @classmethod
    def length_reached(cls, length: int) -> "FinishReason":
        return cls("length", length=length)

    @classmethod
    def abort(cls, message: str) -> "FinishReason":
        return cls("abort", message=message)

    def to_dict(self) -> Dict[str, Any]:
        """``{"type": "stop", "matched": id|str}``, ``{"type": "length",
        "length": n}`` or ``{"type": "abort", "message": str}``."""
        if self.type == "stop":
            return {"type": "stop", "matched": self.matched}
        if self.type == "length":
            return {"type": "length", "length": self.length}
        return {"type": "abort", "message": self.message}

    @property
    def openai_reason(self) -> str:
        """OpenAI's ``finish_reason``: "stop" or "length" ("abort" kept as is)."""
        return self.type


class StopChecker:
    """Stop-condition state of one request.

    Args:
        params: the request's SamplingParams.
        eos_token_ids: the tokenizer's EOS id(s) (ignored when ``ignore_eos``).
        tokenizer: optional; when given, a matched stop token's own text (e.g.
            ``"<|im_end|>"`` with ``skip_special_tokens=False``) is removed
            from :meth:`visible_text` unless ``no_stop_trim``.

    Call :meth:`check` after each step with all output ids and all output
    text so far (text from :class:`~sgl.engine.detokenizer.IncrementalDetokenizer`),
    then :meth:`visible_text` for what may be shown/streamed.
    """

    def __init__(self, params: SamplingParams, eos_token_ids: Iterable[int] = (), tokenizer: Any = None):
        self.params = params
        self.stop_strs: List[str] = params.stop_strs
        self.max_stop_len = max((len(s) for s in self.stop_strs), default=0)
        self.stop_regexes = [re.compile(p) for p in params.stop_regex_strs]
        self.stop_token_ids = set(params.stop_token_ids or [])
        self.eos_token_ids = set() if params.ignore_eos else {int(e) for e in eos_token_ids}
        self.tokenizer = tokenizer
        self.finish_reason: Optional[FinishReason] = None
        self.stop_str_pos: Optional[int] = None  # where the matched stop string starts
        self.stop_str_len = 0  # length of the matched text
        self._checked_len = 0  # len(text) at the previous check

    def check(self, output_ids: List[int], text: str) -> Optional[FinishReason]:
        """Return the FinishReason once the request is done, else None.

        Args:
            output_ids: every output token id so far (the newest last).
            text: every output character so far (grows between calls).

        Once finished, the same reason is returned on later calls.
        """
        if self.finish_reason is not None:
            return self.finish_reason
        prev, self._checked_len = self._checked_len, len(text)
        n = len(output_ids)
        reason = None
        if n >= self.params.min_new_tokens and n > 0:
            last = int(output_ids[-1])
            if last in self.eos_token_ids or last in self.stop_token_ids:
                reason = FinishReason.stop(last)
            else:
                reason = self._find_stop_str(text, prev)
        if reason is None and n >= self.params.max_new_tokens:
            reason = FinishReason.length_reached(self.params.max_new_tokens)
        self.finish_reason = reason
        return reason

    def _find_stop_str(self, text: str, prev: int) -> Optional[FinishReason]:
        best = None  # (start, length, matched)
        for s in self.stop_strs:
            pos = text.find(s, max(0, prev - len(s) + 1))  # must end in the new text
            if pos != -1 and (best is None or pos < best[0]):
                best = (pos, len(s), s)
        for rx in self.stop_regexes:
            m = next((m for m in rx.finditer(text) if m.end() > prev and m.end() > m.start()), None)
            if m is not None and (best is None or m.start() < best[0]):
                best = (m.start(), m.end() - m.start(), rx.pattern)
        if best is None:
            return None
        self.stop_str_pos, self.stop_str_len, matched = best
        return FinishReason.stop(matched)

    def visible_text(self, text: str, finished: bool) -> str:
        """The part of ``text`` that may be returned or streamed.

        Finished by a stop string (or stop_regex match): cut before it (``no_stop_trim``: keep it,
        and drop anything after it). Finished by a stop token with a
        tokenizer: its text removed unless ``no_stop_trim``. Other finishes:
        ``text``. Unfinished: ``text`` minus its longest suffix that is a
        prefix of a stop string, so partial stop strings never stream out
        (the result only grows from call to call).
        """
        if finished:
            return self._trimmed(text)
        hold = 0
        for k in range(min(len(text), self.max_stop_len), 0, -1):
            suffix = text[-k:]
            if any(s.startswith(suffix) for s in self.stop_strs):
                hold = k
                break
        return text[: len(text) - hold]

    def _trimmed(self, text: str) -> str:
        reason = self.finish_reason
        if reason is None or reason.type != "stop":
            return text
        if isinstance(reason.matched, str) and self.stop_str_pos is not None:
            end = self.stop_str_pos + (self.stop_str_len if self.params.no_stop_trim else 0)
            return text[:end]
        if isinstance(reason.matched, int) and self.tokenizer is not None and not self.params.no_stop_trim:
            tok_text = self.tokenizer.decode(
                [reason.matched], skip_special_tokens=self.params.skip_special_tokens)
            if tok_text and text.endswith(tok_text):
                return text[: len(text) - len(tok_text)]
        return text
