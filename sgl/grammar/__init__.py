"""Constrained decoding: regex / JSON-schema grammars over the model vocabulary.

Public API (see :mod:`sgl.grammar.base` for the contract)::

    backend = make_grammar_backend("builtin", tokenizer, vocab_size)
    grammar = backend.compile(regex=...)            # or json_schema=...
    grammar.fill_vocab_mask(row); grammar.accept_token(t); grammar.is_terminated()
    s = grammar.try_jump_forward(); keep, tail = jump_forward_retokenize(tokenizer, ids, s)
    grammar.accept_string(s)

Backends (``GRAMMAR_BACKENDS``, the Hydra ``grammar.backend`` names):
``builtin`` (default; lazy byte DFA, this package) and ``xgrammar`` (needs
the xgrammar package).
"""

from __future__ import annotations

from sgl.grammar.base import Grammar, GrammarBackend
from sgl.grammar.builtin_backend import BuiltinGrammar, BuiltinGrammarBackend
from sgl.grammar.dtypes import REGEX_BOOL, REGEX_FLOAT, REGEX_INT, REGEX_STR
from sgl.grammar.json_schema import build_regex_from_schema
from sgl.grammar.jump_forward import jump_forward_retokenize
from sgl.core.registry import Registry

GRAMMAR_BACKENDS: Registry = Registry("grammar backend")
GRAMMAR_BACKENDS.register("builtin")(BuiltinGrammarBackend)


@GRAMMAR_BACKENDS.register("xgrammar")
def _make_xgrammar_backend(tokenizer, vocab_size: int, **kwargs) -> GrammarBackend:
    from sgl.grammar.xgrammar_backend import XGrammarBackend  # optional dependency

    return XGrammarBackend(tokenizer, vocab_size, **kwargs)


def make_grammar_backend(name: str, tokenizer, vocab_size: int, **kwargs) -> GrammarBackend:
    """Build the grammar backend registered as ``name`` (once per engine).

    Args:
        name: ``builtin`` or ``xgrammar``.
        tokenizer: the model's HF tokenizer.
        vocab_size: the model's logits width (may exceed ``len(tokenizer)``).
        **kwargs: backend options (e.g. ``eos_token_ids``, ``whitespace_pattern`` for builtin).

    Raises:
        ValueError: unknown name (lists the known ones) or bad arguments.
        ImportError: ``xgrammar`` requested but not installed.
    """
    return GRAMMAR_BACKENDS.get(name)(tokenizer, vocab_size, **kwargs)


__all__ = [
    "GRAMMAR_BACKENDS", "make_grammar_backend", "Grammar", "GrammarBackend",
    "BuiltinGrammar", "BuiltinGrammarBackend", "build_regex_from_schema",
    "jump_forward_retokenize", "REGEX_INT", "REGEX_FLOAT", "REGEX_BOOL", "REGEX_STR",
]
