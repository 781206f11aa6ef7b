"""The grammar-backend contract the engine calls (constrained decoding).

Lifecycle, as the engine uses it::

    backend = make_grammar_backend("builtin", tokenizer, vocab_size)   # once per engine
    grammar = backend.compile(regex=r"...")          # per request, before queueing;
                                                     # ValueError -> HTTP 400
    # every decode step, for each constrained row i of the batch:
    grammar.fill_vocab_mask(mask[i])                 # bool [vocab_size] row
    ... sample token t from logits masked with mask ...
    grammar.accept_token(t)
    if grammar.is_terminated(): finish the request
    s = grammar.try_jump_forward()                   # optional compressed-FSM jump
    if s is not None:
        keep, tail = jump_forward_retokenize(tokenizer, req.output_ids, s)
        if tail:                                     # ([], keep == len) means "don't jump"
            grammar.accept_string(s)
            req.output_ids = req.output_ids[:keep] + tail   # extend-prefill the new tail

State is text-based: ``accept_string`` advances by the bytes of the text, so
re-tokenizing output that was already accepted does not touch the grammar.

EOS: the backend's EOS ids (default ``tokenizer.eos_token_id``) are allowed
exactly in accepting states; other special tokens and ids in
``[len(tokenizer), vocab_size)`` are never allowed.  A generation cut by
``max_new_tokens`` is a prefix of some full match.
"""

from __future__ import annotations

import abc
from typing import Dict, Optional, Union

import torch


class Grammar(abc.ABC):
    """Per-request matcher state over the model vocabulary."""

    @abc.abstractmethod
    def fill_vocab_mask(self, mask_row: torch.Tensor) -> None:
        """Overwrite the bool ``[vocab_size]`` tensor ``mask_row`` (any device):
        True exactly for the tokens allowed now (EOS iff the text so far is a
        full match; only EOS once terminated)."""

    @abc.abstractmethod
    def accept_token(self, token_id: int) -> None:
        """Advance by one sampled token.

        Raises:
            ValueError: the token is not allowed in the current state (state unchanged).
        """

    @abc.abstractmethod
    def accept_string(self, text: str) -> None:
        """Advance by the UTF-8 bytes of ``text`` (after a jump-forward).

        Raises:
            ValueError: ``text`` leaves the language (state unchanged).
        """

    @abc.abstractmethod
    def is_terminated(self) -> bool:
        """True once EOS was accepted, or the text is a full match that cannot
        be extended (the engine then finishes the request without sampling EOS)."""

    @abc.abstractmethod
    def try_jump_forward(self) -> Optional[str]:
        """The text forced from the current state along the compressed FSM
        (longest run of single-transition, non-accepting states, cut to whole
        characters; the builtin backend by default also leaves that text's
        last token to the model), or None when there is nothing worth
        jumping.  Does not change the state."""

    @abc.abstractmethod
    def copy(self) -> "Grammar":
        """An independent matcher in the same state (for fork / n > 1)."""


JsonSchema = Union[str, Dict]


class GrammarBackend(abc.ABC):
    """Compiles regexes / JSON schemas into :class:`Grammar` matchers for one vocabulary.

    Args:
        tokenizer: the model's HF tokenizer.
        vocab_size: the model's logits width (may exceed ``len(tokenizer)``).
    """

    def __init__(self, tokenizer, vocab_size: int):
        if int(vocab_size) < len(tokenizer):
            raise ValueError(f"vocab_size={vocab_size} is smaller than the tokenizer "
                             f"({len(tokenizer)} tokens)")
        self.tokenizer = tokenizer
        self.vocab_size = int(vocab_size)

    @abc.abstractmethod
    def compile(self, regex: Optional[str] = None,
                json_schema: Optional[JsonSchema] = None) -> Grammar:
        """A fresh matcher for ``regex`` or ``json_schema`` (exactly one).

        Cheap: the automaton is cached per regex and built lazily.

        Raises:
            ValueError: neither or both given; empty, invalid or unsatisfiable
                regex; invalid JSON schema; unsupported schema keyword (named).
        """


def check_one_constraint(regex, json_schema) -> None:
    """ValueError unless exactly one of ``regex`` / ``json_schema`` is given."""
    if (regex is None) == (json_schema is None):
        raise ValueError("give exactly one of regex / json_schema "
                         f"(got regex={regex!r}, json_schema={json_schema!r})")
