"""Optional ``grammar=xgrammar`` backend: the same :class:`Grammar` contract on top
of the ``xgrammar`` package (Dong et al., 2024, "XGrammar: Flexible and Efficient
Structured Generation Engine for LLMs"), for side-by-side comparisons.

Requires ``pip install xgrammar``; constructing the backend without it raises
ImportError with that hint.  Masks come from xgrammar's packed int32 bitmask,
unpacked to our bool row.
"""

from __future__ import annotations

import json
from typing import Iterable, Optional

import torch

from sgl.grammar.base import Grammar, GrammarBackend, JsonSchema, check_one_constraint
from sgl.grammar.limits import check_regex_depth, check_schema_depth, json_depth_error


def _import_xgrammar():
    try:
        import xgrammar
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("grammar=xgrammar needs the xgrammar package: pip install xgrammar") from e
    return xgrammar


class XGrammarGrammar(Grammar):
    """Wraps an ``xgrammar.GrammarMatcher``."""

    def __init__(self, matcher, vocab_size: int, eos_token_ids, xgr):
        self.matcher = matcher
        self.vocab_size = vocab_size
        self.eos_token_ids = sorted(eos_token_ids)
        self._xgr = xgr
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)
        self._shifts = torch.arange(32, dtype=torch.int32)

    def _bool_mask(self) -> torch.Tensor:
        self.matcher.fill_next_token_bitmask(self._bitmask, 0)
        bits = (self._bitmask[0, :, None] >> self._shifts) & 1
        return bits.reshape(-1)[: self.vocab_size].bool()

    def fill_vocab_mask(self, mask_row: torch.Tensor) -> None:
        mask_row.copy_(self._bool_mask())

    def accept_token(self, token_id: int) -> None:
        if not self.matcher.accept_token(int(token_id)):
            raise ValueError(f"token {token_id} is not allowed by the grammar in the current state")

    def accept_string(self, text: str) -> None:
        if not self.matcher.accept_string(text):
            raise ValueError(f"text {text!r} is not allowed by the grammar in the current state")

    def is_terminated(self) -> bool:
        if self.matcher.is_terminated():
            return True
        if not self.matcher.is_completed():
            return False
        allowed = self._bool_mask().nonzero().flatten().tolist()
        return set(allowed) <= set(self.eos_token_ids)

    def try_jump_forward(self) -> Optional[str]:
        return self.matcher.find_jump_forward_string() or None

    def copy(self) -> "XGrammarGrammar":
        return XGrammarGrammar(self.matcher.fork(), self.vocab_size, self.eos_token_ids, self._xgr)


class XGrammarBackend(GrammarBackend):
    """``GrammarBackend`` over xgrammar.

    Args:
        tokenizer, vocab_size: as for every backend.
        eos_token_ids: stop tokens (default ``[tokenizer.eos_token_id]``).
        any_whitespace: xgrammar's JSON whitespace flexibility for json_schema.

    Raises:
        ImportError: xgrammar is not installed.
    """

    def __init__(self, tokenizer, vocab_size: int, eos_token_ids: Optional[Iterable[int]] = None,
                 any_whitespace: bool = False, max_threads: int = 1):
        super().__init__(tokenizer, vocab_size)
        xgr = self._xgr = _import_xgrammar()
        eos = list(eos_token_ids) if eos_token_ids is not None else [tokenizer.eos_token_id]
        self.eos_token_ids = [int(t) for t in eos if t is not None]
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=self.vocab_size,
                                                  stop_token_ids=self.eos_token_ids)
        self.compiler = xgr.GrammarCompiler(info, max_threads=max_threads)
        self.any_whitespace = any_whitespace

    def compile(self, regex: Optional[str] = None, json_schema: Optional[JsonSchema] = None) -> XGrammarGrammar:
        check_one_constraint(regex, json_schema)
        try:
            if regex is not None:
                if not isinstance(regex, str) or regex == "":
                    raise ValueError("regex is empty")
                check_regex_depth(regex)  # the same limits as the builtin backend
                compiled = self.compiler.compile_regex(regex)
            else:
                try:
                    parsed = json.loads(json_schema) if isinstance(json_schema, str) else json_schema
                except RecursionError:
                    raise json_depth_error() from None
                except json.JSONDecodeError as e:
                    raise ValueError(f"json_schema is not valid JSON: {e}") from None
                check_schema_depth(parsed)
                schema = json_schema if isinstance(json_schema, str) else json.dumps(json_schema)
                compiled = self.compiler.compile_json_schema(schema, any_whitespace=self.any_whitespace)
        except ValueError:
            raise
        except Exception as e:  # xgrammar raises RuntimeError with the parser's message
            what = "regex" if regex is not None else "json_schema"
            raise ValueError(f"invalid {what}: {e}") from None
        g = XGrammarGrammar(self._xgr.GrammarMatcher(compiled), self.vocab_size, self.eos_token_ids, self._xgr)
        if not g._bool_mask().any() and not g.is_terminated():
            raise ValueError(f"{'regex' if regex is not None else 'json_schema'} is unsatisfiable")
        return g
