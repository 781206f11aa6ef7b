"""Intermediate representation of frontend-language programs.

A program appends expressions to its state (``s += expr``).  Expressions are
small immutable-ish nodes built by the factories in :mod:`sgl.lang.api`:
constant text, generation calls, choice selections, role markers, images and
lists of those (``"a" + gen("x")`` builds an :class:`SglExprList`).  The
interpreter (:mod:`sgl.lang.interpreter`) executes them against a
:class:`~sgl.backends.base.Backend`.

Semantics follow SGLang's ``python/sglang/lang/ir.py`` (our own code).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from typing import Any, Dict, List, Optional, Sequence, Union

# Field names of SglSamplingParams that a gen() call may override.
SAMPLING_FIELDS = (
    "max_new_tokens",
    "min_new_tokens",
    "stop",
    "stop_token_ids",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "frequency_penalty",
    "presence_penalty",
    "ignore_eos",
    "return_logprob",
    "logprob_start_len",
    "top_logprobs_num",
    "return_text_in_logprobs",
    "dtype",
    "regex",
    "json_schema",
)

# The subset that the engine's /generate takes as top-level request fields
# rather than inside ``sampling_params``.
LOGPROB_FIELDS = ("return_logprob", "logprob_start_len", "top_logprobs_num", "return_text_in_logprobs")


@dataclasses.dataclass
class SglSamplingParams:
    """Sampling parameters of one gen() call, in SGLang's names.

    ``None`` means "not set here": a gen() node carries only its overrides and
    the interpreter merges them over the program's defaults (the keyword
    arguments of ``.run()``).  Units: token counts for ``max_new_tokens`` /
    ``min_new_tokens``; ``temperature`` 0 means greedy.

    ``dtype`` (``int``, ``float``, ``bool``, ``str`` or their names) is turned
    into a ``regex`` by :meth:`resolve_dtype` before the request is sent.
    """

    max_new_tokens: Optional[int] = 128
    min_new_tokens: Optional[int] = None
    stop: Optional[Union[str, List[str]]] = None
    stop_token_ids: Optional[List[int]] = None
    temperature: Optional[float] = 1.0
    top_p: Optional[float] = 1.0
    top_k: Optional[int] = -1
    min_p: Optional[float] = 0.0
    frequency_penalty: Optional[float] = 0.0
    presence_penalty: Optional[float] = 0.0
    ignore_eos: Optional[bool] = False
    return_logprob: Optional[bool] = None
    logprob_start_len: Optional[int] = None
    top_logprobs_num: Optional[int] = None
    return_text_in_logprobs: Optional[bool] = None
    dtype: Any = None
    regex: Optional[str] = None
    json_schema: Optional[str] = None

    @classmethod
    def overrides(cls, **kwargs) -> "SglSamplingParams":
        """A params object with every field ``None`` except those given."""
        unknown = set(kwargs) - set(SAMPLING_FIELDS)
        if unknown:
            raise ValueError(f"unknown sampling parameter(s): {sorted(unknown)}")
        params = cls(**{f: None for f in SAMPLING_FIELDS})
        for k, v in kwargs.items():
            setattr(params, k, v)
        return params

    def clone(self) -> "SglSamplingParams":
        return copy.deepcopy(self)

    def merged(self, overrides: "SglSamplingParams", extra_stop: Sequence[str] = ()) -> "SglSamplingParams":
        """``self`` (defaults) with every non-None field of ``overrides`` applied,
        plus ``extra_stop`` (the chat template's stop strings) appended to ``stop``."""
        out = self.clone()
        for f in SAMPLING_FIELDS:
            v = getattr(overrides, f)
            if v is not None:
                setattr(out, f, copy.deepcopy(v))
        if extra_stop:
            stop = [] if out.stop is None else ([out.stop] if isinstance(out.stop, str) else list(out.stop))
            out.stop = stop + [s for s in extra_stop if s not in stop]
        return out

    def resolve_dtype(self) -> "SglSamplingParams":
        """Map ``dtype`` to a regex (and stop strings for numbers), like SGLang.

        Returns a copy with ``regex`` set and ``dtype`` cleared.  The regexes
        come from :mod:`sgl.grammar.dtypes` (imported lazily).

        Raises:
            ValueError: ``dtype`` is not one of int/float/bool/str.
            ImportError: the grammar package has no ``dtypes`` module yet.
        """
        if self.dtype is None:
            return self
        from sgl.grammar import dtypes  # lazy: the grammar layer is optional for plain gen

        out = self.clone()
        stop = [] if out.stop is None else ([out.stop] if isinstance(out.stop, str) else list(out.stop))
        d = out.dtype
        if d in (int, "int"):
            out.regex, stop = dtypes.REGEX_INT, stop + [" ", "\n"]
        elif d in (float, "float"):
            out.regex, stop = dtypes.REGEX_FLOAT, stop + [" ", "\n"]
        elif d in (bool, "bool"):
            out.regex = dtypes.REGEX_BOOL
        elif d in (str, "str"):
            out.regex = dtypes.REGEX_STR
        else:
            raise ValueError(f"dtype must be one of int, float, bool, str; got {d!r}")
        out.stop = stop or None
        out.dtype = None
        return out

    def to_srt_kwargs(self) -> Dict[str, Any]:
        """The engine's ``sampling_params`` dict (SGLang /generate names).

        Only fields that are set are included; logprob fields are excluded
        (they are top-level request fields, see :meth:`logprob_kwargs`).
        """
        if self.dtype is not None:
            raise ValueError("dtype must be resolved with resolve_dtype() before to_srt_kwargs()")
        out: Dict[str, Any] = {}
        for f in SAMPLING_FIELDS:
            if f in LOGPROB_FIELDS or f == "dtype":
                continue
            v = getattr(self, f)
            if v is None:
                continue
            if f in ("stop", "stop_token_ids") and not v:
                continue
            out[f] = list(v) if isinstance(v, tuple) else v
        return out

    def logprob_kwargs(self) -> Dict[str, Any]:
        """The set logprob request fields (return_logprob, logprob_start_len, ...)."""
        return {f: getattr(self, f) for f in LOGPROB_FIELDS if getattr(self, f) is not None}

    def to_openai_kwargs(self) -> Dict[str, Any]:
        """OpenAI completion/chat kwargs (fields OpenAI has no equivalent for are dropped)."""
        stop = self.stop
        return {
            "max_tokens": self.max_new_tokens,
            "stop": (stop if isinstance(stop, str) else list(stop or ())) or None,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty,
        }


class SglExpr:
    """Base of all IR nodes.  ``a + b`` concatenates into an :class:`SglExprList`."""

    _ids = itertools.count()

    def __init__(self):
        self.node_id = next(SglExpr._ids)

    def __add__(self, other):
        return _concat(self, _as_expr(other))

    def __radd__(self, other):
        return _concat(_as_expr(other), self)


def _as_expr(x) -> SglExpr:
    if isinstance(x, SglExpr):
        return x
    if isinstance(x, str):
        return SglConstantText(x)
    raise TypeError(f"cannot append {type(x).__name__} to a program; use str or an sgl expression")


def _concat(a: SglExpr, b: SglExpr) -> "SglExprList":
    left = a.expr_list if isinstance(a, SglExprList) else [a]
    right = b.expr_list if isinstance(b, SglExprList) else [b]
    return SglExprList(left + right)


class SglExprList(SglExpr):
    """A sequence of expressions executed in order."""

    def __init__(self, expr_list: List[SglExpr]):
        super().__init__()
        self.expr_list = list(expr_list)

    def __repr__(self):
        return f"ExprList({self.expr_list})"


class SglConstantText(SglExpr):
    """Literal text appended to the prompt."""

    def __init__(self, value: str):
        super().__init__()
        self.value = str(value)

    def __repr__(self):
        return f"Constant({self.value!r})"


class SglGen(SglExpr):
    """Generate text into variable ``name`` with the overriding ``sampling_params``."""

    def __init__(self, name: Optional[str], sampling_params: SglSamplingParams):
        super().__init__()
        self.name = name
        self.sampling_params = sampling_params

    def __repr__(self):
        return f"Gen({self.name!r})"


class SglSelect(SglExpr):
    """Pick one of ``choices`` by scoring each continuation (see :mod:`sgl.lang.choices`)."""

    def __init__(self, name: Optional[str], choices: List[str], temperature: float, choices_method):
        super().__init__()
        if not choices or not all(isinstance(c, str) for c in choices):
            raise ValueError(f"choices must be a non-empty list of str, got {choices!r}")
        self.name = name
        self.choices = list(choices)
        self.temperature = temperature
        self.choices_method = choices_method

    def __repr__(self):
        return f"Select({self.name!r}, choices={self.choices})"


class SglRoleBegin(SglExpr):
    """Open a chat role (system / user / assistant): appends the template's prefix."""

    def __init__(self, role: str):
        super().__init__()
        self.role = role

    def __repr__(self):
        return f"RoleBegin({self.role})"


class SglRoleEnd(SglExpr):
    """Close the current chat role: appends the template's suffix and records a message."""

    def __init__(self, role: str):
        super().__init__()
        self.role = role

    def __repr__(self):
        return f"RoleEnd({self.role})"


class SglImage(SglExpr):
    """An image (file path, URL, base64 data URL or raw bytes) placed in the prompt."""

    def __init__(self, source):
        super().__init__()
        if not isinstance(source, (str, bytes, bytearray)) and not hasattr(source, "save"):
            raise ValueError(f"image() takes a path, URL, base64 string, bytes or PIL image; got {type(source).__name__}")
        self.source = source

    def __repr__(self):
        return f"Image({str(self.source)[:40]!r})"


class SglVarScopeBegin(SglExpr):
    """Start capturing appended text into variable ``name``."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name


class SglVarScopeEnd(SglExpr):
    """Stop capturing text into variable ``name``."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name


class SglCommitLazy(SglExpr):
    """Commit the current prompt to the backend (prefix caching before a fork)."""


class SglConcateAndAppend(SglExpr):
    """Append the text each fork added after the fork point (join mode ``concate_and_append``)."""

    def __init__(self, states):
        super().__init__()
        self.states = list(states)


def iter_leaves(expr: SglExpr):
    """Yield the non-list nodes of ``expr`` in execution order."""
    if isinstance(expr, SglExprList):
        for e in expr.expr_list:
            yield from iter_leaves(e)
    else:
        yield expr
