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

import itertools
from typing import List, Optional

from sgl.backends.sampling_params import SglSamplingParams


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
    """Pick one of ``choices`` by scoring each continuation (see :mod:`sgl.backends.choices`)."""

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
