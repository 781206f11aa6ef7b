"""The built-in grammar backend: lazy byte DFA + lazy token index + compressed-FSM jumps.

Per engine: one :class:`TokenVocab` (token bytes, ~0.3 s for 49k tokens).
Per distinct regex (LRU-cached): a :class:`CompiledRegex` -- the lazily
determinized :class:`ByteDFA`, its :class:`TokenIndex` and its forced-string
cache -- shared by every request with that regex, so a repeated regex costs
nothing and a new one costs one NFA build (milliseconds) plus the first
state's token set.  Per request: a :class:`BuiltinGrammar`, i.e. one DFA
state id.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Dict, Iterable, Optional

import numpy as np
import torch

from sgl.grammar.base import Grammar, GrammarBackend, JsonSchema, check_one_constraint
from sgl.grammar.fsm import ByteDFA
from sgl.grammar.json_schema import build_regex_from_schema
from sgl.grammar.jump_forward import forced_string, hold_back_last_token
from sgl.grammar.limits import check_schema_depth
from sgl.grammar.token_index import TokenIndex
from sgl.grammar.vocab import TokenVocab, get_token_vocab

_UNSET = object()


class CompiledRegex:
    """Everything shared by the requests of one regex (thread-safe, lazily filled).

    Args:
        regex: the regex.
        vocab: the tokenizer's byte tables.
        holdback_tokenizer: if given, jump strings leave their last token to
            the model (:func:`hold_back_last_token`).
    """

    def __init__(self, regex: str, vocab: TokenVocab, holdback_tokenizer=None):
        self.regex = regex
        self.vocab = vocab
        self.dfa = ByteDFA(regex)
        self.index = TokenIndex(vocab, self.dfa)
        self.holdback_tokenizer = holdback_tokenizer
        self._forced: Dict[int, Optional[str]] = {}

    def forced(self, state: int) -> Optional[str]:
        """Cached jump string of ``state``: :func:`forced_string`, minus its last
        token when holding back."""
        s = self._forced.get(state, _UNSET)
        if s is _UNSET:
            with self.dfa.lock:
                s = forced_string(self.dfa, state)
                if self.holdback_tokenizer is not None:
                    s = hold_back_last_token(self.holdback_tokenizer, self.vocab, s)
                self._forced[state] = s
        return s


class BuiltinGrammar(Grammar):
    """One request's matcher: a state of a shared :class:`CompiledRegex`."""

    __slots__ = ("compiled", "vocab", "state", "eos_accepted")

    def __init__(self, compiled: CompiledRegex, vocab: TokenVocab, state: Optional[int] = None,
                 eos_accepted: bool = False):
        self.compiled = compiled
        self.vocab = vocab
        self.state = compiled.dfa.initial if state is None else state
        self.eos_accepted = eos_accepted

    def fill_vocab_mask(self, mask_row: torch.Tensor) -> None:
        if mask_row.dim() != 1 or mask_row.shape[0] != self.vocab.vocab_size or mask_row.dtype != torch.bool:
            raise ValueError(f"mask_row must be a bool [{self.vocab.vocab_size}] tensor, "
                             f"got {mask_row.dtype} {tuple(mask_row.shape)}")
        if self.eos_accepted:
            mask_row.fill_(False)
            mask_row[sorted(self.vocab.eos_token_ids)] = True
            return
        self.compiled.index.fill(self.state, mask_row)

    def accept_token(self, token_id: int) -> None:
        token_id = int(token_id)
        dfa = self.compiled.dfa
        if self.eos_accepted:
            raise ValueError(f"token {token_id} after EOS: the grammar already terminated")
        if token_id in self.vocab.eos_token_ids:
            if not dfa.accepting[self.state]:
                raise ValueError(f"EOS token {token_id} is not allowed: the output is not a full "
                                 f"match of {self.compiled.regex!r} yet")
            self.eos_accepted = True
            return
        if not 0 <= token_id < self.vocab.vocab_size or not self.vocab.token_bytes[token_id]:
            raise ValueError(f"token {token_id} is never allowed by a grammar (special or out of range)")
        nxt = dfa.walk(self.state, self.vocab.token_bytes[token_id])
        if nxt == dfa.dead:
            raise ValueError(f"token {token_id} ({self.vocab.token_bytes[token_id]!r}) is not allowed "
                             f"by {self.compiled.regex!r} in the current state")
        self.state = nxt

    def accept_string(self, text: str) -> None:
        dfa = self.compiled.dfa
        if self.eos_accepted:
            raise ValueError("accept_string after EOS: the grammar already terminated")
        nxt = dfa.walk(self.state, text.encode("utf-8"))
        if nxt == dfa.dead:
            raise ValueError(f"text {text!r} is not allowed by {self.compiled.regex!r} in the current state")
        self.state = nxt

    def is_terminated(self) -> bool:
        return self.eos_accepted or self.compiled.dfa.is_final(self.state)

    def is_accepting(self) -> bool:
        """True iff the text so far fully matches (EOS would be allowed)."""
        return bool(self.compiled.dfa.accepting[self.state])

    def try_jump_forward(self) -> Optional[str]:
        if self.eos_accepted:
            return None
        return self.compiled.forced(self.state)

    def allowed_token_ids(self) -> np.ndarray:
        """Sorted int64 ids allowed now (including EOS when accepting)."""
        return np.flatnonzero(self.compiled.index.mask(self.state)) if not self.eos_accepted \
            else np.array(sorted(self.vocab.eos_token_ids), dtype=np.int64)

    def copy(self) -> "BuiltinGrammar":
        return BuiltinGrammar(self.compiled, self.vocab, self.state, self.eos_accepted)


class BuiltinGrammarBackend(GrammarBackend):
    """Pure-Python/numpy regex and JSON-schema backend (the default, ``grammar=builtin``).

    Args:
        tokenizer: the model's HF tokenizer.
        vocab_size: the model's logits width (may exceed ``len(tokenizer)``).
        eos_token_ids: ids that end generation (default ``[tokenizer.eos_token_id]``).
        whitespace_pattern: whitespace regex between JSON tokens for json_schema
            (default ``[ ]?``).
        max_cached_regexes: LRU size of the compiled-regex cache.
        jump_holdback: jump strings stop before the forced text's last token
            (default True; see :func:`sgl.grammar.jump_forward.hold_back_last_token`).

    Raises:
        ValueError: ``vocab_size`` smaller than the tokenizer, or no EOS id known.
    """

    def __init__(self, tokenizer, vocab_size: int, eos_token_ids: Optional[Iterable[int]] = None,
                 whitespace_pattern: Optional[str] = None, max_cached_regexes: int = 512,
                 jump_holdback: bool = True):
        super().__init__(tokenizer, vocab_size)
        self.vocab = get_token_vocab(tokenizer, self.vocab_size,
                                     None if eos_token_ids is None else list(eos_token_ids))
        if not self.vocab.eos_token_ids:
            raise ValueError("eos_token_ids: the tokenizer has no eos_token_id; pass eos_token_ids")
        self.whitespace_pattern = whitespace_pattern
        self.max_cached_regexes = int(max_cached_regexes)
        self.jump_holdback = bool(jump_holdback)
        self._lock = threading.Lock()
        self._compiled: "OrderedDict[str, CompiledRegex]" = OrderedDict()
        self._schema_regex: Dict[str, str] = {}

    def regex_from_json_schema(self, json_schema: JsonSchema) -> str:
        """The regex used for ``json_schema`` (memoized). Raises ValueError like ``compile``."""
        if not isinstance(json_schema, (str, bytes)):
            check_schema_depth(json_schema)  # before json.dumps, which recurses
        key = json_schema if isinstance(json_schema, str) else json.dumps(json_schema, sort_keys=True)
        regex = self._schema_regex.get(key)
        if regex is None:
            regex = build_regex_from_schema(json_schema, self.whitespace_pattern)
            self._schema_regex[key] = regex
        return regex

    def compiled(self, regex: str) -> CompiledRegex:
        """The shared :class:`CompiledRegex` of ``regex`` (built on first use)."""
        with self._lock:
            c = self._compiled.get(regex)
            if c is not None:
                self._compiled.move_to_end(regex)
                return c
        c = CompiledRegex(regex, self.vocab, self.tokenizer if self.jump_holdback else None)  # may raise
        with self._lock:
            c = self._compiled.setdefault(regex, c)
            while len(self._compiled) > self.max_cached_regexes:
                self._compiled.popitem(last=False)
        return c

    def compile(self, regex: Optional[str] = None, json_schema: Optional[JsonSchema] = None) -> BuiltinGrammar:
        check_one_constraint(regex, json_schema)
        if json_schema is not None:
            regex = self.regex_from_json_schema(json_schema)
        return BuiltinGrammar(self.compiled(regex), self.vocab)
