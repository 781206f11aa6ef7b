"""JSON Schema -> regex, so a schema-constrained request is a regex-constrained one.

Same approach as Outlines' ``build_regex_from_schema`` (which SGLang uses):
every value the regex matches is JSON that validates against the schema
(when the schema only uses the supported keywords below); properties come in
declaration order.

Supported: ``type`` (string, integer, number, boolean, null, object, array, or
a list of them), ``properties`` / ``required`` (optional properties may be
omitted), ``additionalProperties`` (an object without ``properties`` becomes a
map with string keys and values of that schema), ``items`` / ``minItems`` /
``maxItems``, ``enum``, ``const``, ``minLength`` / ``maxLength``, ``pattern``
(anchored, i.e. the whole string matches), ``format`` (date-time, date,
time, uuid), integer ``minimum`` / ``maximum`` / ``exclusiveMinimum`` /
``exclusiveMaximum``, ``anyOf`` / ``oneOf`` (as alternation), one-element
``allOf``, and ``$ref`` to ``#``, ``#/$defs/...`` or ``#/definitions/...``
(not recursive).  Annotations (title, description, default, examples, ...)
are ignored.  Anything else raises ValueError naming the keyword.

Known gaps: ``oneOf`` alternatives are not made mutually exclusive (output
matching two of them fails ``oneOf`` validation); a ``pattern`` is inserted
between the quotes as-is, so a pattern that can produce ``"``, ``\\`` or
control characters can yield invalid JSON; numbers take no bounds.

Limits (:mod:`sgl.grammar.limits`): subschemas nest at most 32 levels (``$ref`` included),
the schema document at most 128 objects/arrays, the resulting regex has at most 1,000,000
characters, and integer bounds at most 100 digits; beyond them a ValueError names the limit.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Dict, List, Optional, Tuple

import jsonschema

from sgl.grammar.limits import (MAX_INTEGER_BOUND_DIGITS, MAX_SCHEMA_DEPTH, MAX_SCHEMA_REGEX_CHARS,
                                check_schema_depth, json_depth_error, schema_depth_error)

WHITESPACE = r"[ ]?"  # Outlines' default: at most one space between tokens
STRING_INNER = r'(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})'
STRING = f'"{STRING_INNER}*"'
INTEGER = r"-?(?:0|[1-9][0-9]*)"
NUMBER = r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"
BOOLEAN = r"(?:true|false)"
NULL = r"null"
FORMATS = {
    "date-time": r'"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])T(?:[01][0-9]|2[0-3])'
                 r':[0-5][0-9]:[0-5][0-9](?:\.[0-9]+)?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"',
    "date": r'"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"',
    "time": r'"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]+)?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?"',
    "uuid": r'"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"',
}
ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment",
               "deprecated", "readOnly", "writeOnly", "$defs", "definitions", "$anchor"}
COMBINATORS = {"anyOf", "oneOf", "allOf", "$ref", "enum", "const"}
SUPPORTED = ANNOTATIONS | COMBINATORS | {
    "type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems",
    "minLength", "maxLength", "pattern", "format",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}
GENERIC_DEPTH = 2  # nesting depth of values allowed where the schema says "anything"


def build_regex_from_schema(schema, whitespace_pattern: Optional[str] = None) -> str:
    """The regex of JSON texts that validate against ``schema``.

    Args:
        schema: a JSON Schema as a dict, a bool, or a JSON string.
        whitespace_pattern: regex for the whitespace allowed between tokens
            (default ``[ ]?``; e.g. ``[\\n\\t ]*`` for pretty-printed output).

    Raises:
        ValueError: malformed JSON, an invalid schema (jsonschema's
            ``check_schema``), an unsupported keyword or format (named, with
            its location), a recursive ``$ref``, or a schema no value satisfies.
    """
    if isinstance(schema, (str, bytes)):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as e:
            raise ValueError(f"json_schema is not valid JSON: {e}") from None
        except RecursionError:  # the C decoder nests far deeper than MAX_JSON_DEPTH before this
            raise json_depth_error() from None
    if not isinstance(schema, (dict, bool)):
        raise ValueError(f"json_schema must be an object or a boolean, got {type(schema).__name__}")
    check_schema_depth(schema)  # before jsonschema and the converter, which recurse
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        raise ValueError(f"invalid JSON schema: {e.message} (at {_where(list(e.path))})") from None
    ws = WHITESPACE if whitespace_pattern is None else whitespace_pattern
    try:
        re.compile(ws)
    except re.error as e:
        raise ValueError(f"invalid whitespace_pattern {ws!r}: {e}") from None
    return _Converter(schema, ws).convert(schema, "#", ())


def _check_size(regex_len: int, where: str) -> None:
    if regex_len > MAX_SCHEMA_REGEX_CHARS:
        raise ValueError(f"json_schema is too large: its regex exceeds {MAX_SCHEMA_REGEX_CHARS} characters "
                         f"(at {where}; nested optional properties and arrays multiply its size)")


def _where(path) -> str:
    return "#/" + "/".join(str(p) for p in path) if path else "#"


def _digits_range(a: str, b: str) -> str:
    """Regex for the decimal strings of equal length between ``a`` and ``b`` (inclusive)."""
    if a == b:
        return a
    n = len(a)
    if a == "0" * n and b == "9" * n:
        return f"[0-9]{{{n}}}" if n > 1 else "[0-9]"
    if n == 1:
        return f"[{a}-{b}]"
    if a[0] == b[0]:
        return a[0] + _digits_range(a[1:], b[1:])
    parts = [a[0] + _digits_range(a[1:], "9" * (n - 1))]
    if int(b[0]) - int(a[0]) > 1:
        parts.append(f"[{int(a[0]) + 1}-{int(b[0]) - 1}][0-9]{{{n - 1}}}")
    parts.append(b[0] + _digits_range("0" * (n - 1), b[1:]))
    return "(?:" + "|".join(parts) + ")"


def _nonneg_range(lo: int, hi: Optional[int]) -> List[str]:
    """Alternatives matching the canonical decimals of ``lo..hi`` (``hi`` None = unbounded)."""
    parts = []
    top = len(str(hi)) if hi is not None else len(str(lo))
    for n in range(len(str(lo)), top + 1):
        a = max(lo, 10 ** (n - 1) if n > 1 else 0)
        b = 10 ** n - 1 if hi is None else min(hi, 10 ** n - 1)
        if a <= b:
            parts.append(_digits_range(str(a), str(b)))
    if hi is None:
        parts.append(f"[1-9][0-9]{{{len(str(lo))},}}")
    return parts


def integer_range_regex(lo: Optional[int], hi: Optional[int]) -> str:
    """Regex of the canonical JSON integers in ``[lo, hi]`` (None = unbounded).

    Raises:
        ValueError: ``lo > hi``.
    """
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"integer range is empty: minimum {lo} > maximum {hi}")
    parts = []
    if lo is None or lo < 0:  # negative part: -(1 .. -lo)
        neg_hi = None if lo is None else -lo
        neg_lo = 1 if hi is None or hi >= 0 else -hi
        parts += ["-" + p for p in _nonneg_range(neg_lo, neg_hi)]
    if hi is None or hi >= 0:
        parts += _nonneg_range(max(lo or 0, 0), hi)
    return "(?:" + "|".join(parts) + ")"


class _Converter:
    def __init__(self, root, ws: str):
        self.root = root
        self.ws = ws
        self.depth = -1  # nesting level of the subschema being converted (root = 0)

    def fail(self, where: str, what: str):
        return ValueError(f"unsupported JSON schema {what} at {where}")

    def resolve(self, ref: str, where: str):
        if ref == "#":
            return self.root
        if not ref.startswith("#/"):
            raise self.fail(where, f"$ref {ref!r} (only local refs '#/...' are supported)")
        node: Any = self.root
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or part not in node:
                raise ValueError(f"$ref {ref!r} at {where} does not resolve")
            node = node[part]
        return node

    def convert(self, s, where: str, refs: Tuple[str, ...]) -> str:
        self.depth += 1
        try:
            if self.depth > MAX_SCHEMA_DEPTH:
                raise schema_depth_error(self.depth)
            out = self._convert(s, where, refs)
        finally:
            self.depth -= 1
        _check_size(len(out), where)
        return out

    def _alternatives(self, parts, where: str) -> str:
        """``(?:a|b|...)`` of an iterable of regexes, refused as soon as it grows too large."""
        out, size = [], 0
        for part in parts:
            size += len(part) + 1
            _check_size(size, where)
            out.append(part)
        return "(?:" + "|".join(out) + ")"

    def _convert(self, s, where: str, refs: Tuple[str, ...]) -> str:
        if s is True or s == {}:
            return self.generic(GENERIC_DEPTH)
        if s is False:
            raise ValueError(f"JSON schema at {where} is `false`: no value satisfies it")
        for key in s:
            if key not in SUPPORTED:
                raise self.fail(where, f"keyword {key!r}")
        constraining = [k for k in s if k not in ANNOTATIONS]
        for comb in ("$ref", "anyOf", "oneOf", "allOf", "enum", "const"):
            if comb in s:
                others = [k for k in constraining if k != comb and not (comb in ("enum", "const") and k == "type")]
                if others:
                    raise self.fail(where, f"combination of {comb!r} with sibling keyword {others[0]!r}")
        if "$ref" in s:
            ref = s["$ref"]
            if ref in refs:
                raise self.fail(where, f"recursive $ref {ref!r}")
            return self.convert(self.resolve(ref, where), ref, refs + (ref,))
        if "anyOf" in s or "oneOf" in s:
            key = "anyOf" if "anyOf" in s else "oneOf"
            return self._alternatives((self.convert(sub, f"{where}/{key}/{i}", refs)
                                       for i, sub in enumerate(s[key])), where)
        if "allOf" in s:
            if len(s["allOf"]) != 1:
                raise self.fail(where, "allOf with more than one subschema")
            return self.convert(s["allOf"][0], f"{where}/allOf/0", refs)
        if "const" in s:
            return self.literal(s["const"])
        if "enum" in s:
            return self._alternatives((self.literal(v) for v in s["enum"]), where)
        types = s.get("type")
        if types is None:
            if "properties" in s or "additionalProperties" in s or "required" in s:
                types = "object"
            elif "items" in s or "minItems" in s or "maxItems" in s:
                types = "array"
            elif any(k in s for k in ("minLength", "maxLength", "pattern", "format")):
                types = "string"
            elif any(k in s for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")):
                types = "number"
            else:
                return self.generic(GENERIC_DEPTH)
        if isinstance(types, list):
            return self._alternatives((self.typed(t, s, where, refs) for t in types), where)
        return self.typed(types, s, where, refs)

    def literal(self, value) -> str:
        return re.escape(json.dumps(value, ensure_ascii=False))

    def typed(self, t: str, s: Dict, where: str, refs) -> str:
        if t == "string":
            return self.string(s, where)
        if t == "integer":
            return self.integer(s, where)
        if t == "number":
            for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
                if k in s:
                    raise self.fail(where, f"keyword {k!r} for type 'number' (supported for 'integer')")
            return NUMBER
        if t == "boolean":
            return BOOLEAN
        if t == "null":
            return NULL
        if t == "object":
            return self.object(s, where, refs)
        if t == "array":
            return self.array(s, where, refs)
        raise self.fail(where, f"type {t!r}")

    def string(self, s: Dict, where: str) -> str:
        if "format" in s:
            if s["format"] not in FORMATS:
                raise self.fail(where, f"string format {s['format']!r} (supported: {sorted(FORMATS)})")
            return FORMATS[s["format"]]
        if "pattern" in s:
            if "minLength" in s or "maxLength" in s:
                raise self.fail(where, "combination of 'pattern' with minLength/maxLength")
            pattern = s["pattern"]
            pattern = pattern[1:] if pattern.startswith("^") else pattern
            pattern = pattern[:-1] if pattern.endswith("$") and not pattern.endswith("\\$") else pattern
            return f'"(?:{pattern})"'
        lo, hi = int(s.get("minLength", 0)), s.get("maxLength")
        if hi is not None and int(hi) < lo:
            raise ValueError(f"JSON schema at {where}: maxLength {hi} < minLength {lo}")
        if lo == 0 and hi is None:
            return STRING
        return f'"{STRING_INNER}{{{lo},{"" if hi is None else int(hi)}}}"'

    def integer(self, s: Dict, where: str) -> str:
        lo = hi = None
        ex_lo, ex_hi = s.get("exclusiveMinimum"), s.get("exclusiveMaximum")
        if "minimum" in s:  # draft 4: exclusiveMinimum is a bool modifying minimum
            lo = math.floor(s["minimum"]) + 1 if ex_lo is True else math.ceil(s["minimum"])
        if "maximum" in s:
            hi = math.ceil(s["maximum"]) - 1 if ex_hi is True else math.floor(s["maximum"])
        if ex_lo is not None and not isinstance(ex_lo, bool):
            lo = max(lo if lo is not None else -math.inf, math.floor(ex_lo) + 1)
        if ex_hi is not None and not isinstance(ex_hi, bool):
            hi = min(hi if hi is not None else math.inf, math.ceil(ex_hi) - 1)
        if lo is None and hi is None:
            return INTEGER
        for bound in (lo, hi):
            if bound is not None and abs(bound) >= 10 ** MAX_INTEGER_BOUND_DIGITS:
                raise ValueError(f"JSON schema at {where}: integer bounds may have at most "
                                 f"{MAX_INTEGER_BOUND_DIGITS} digits")
        try:
            return integer_range_regex(lo, hi)
        except ValueError as e:
            raise ValueError(f"JSON schema at {where}: {e}") from None

    def object(self, s: Dict, where: str, refs) -> str:
        ws, props = self.ws, s.get("properties", {})
        required = s.get("required", [])
        for name in required:
            if name not in props:
                raise self.fail(where, f"required property {name!r} that is not in 'properties'")
        open_, close, sep = rf"\{{{ws}", rf"{ws}\}}", f"{ws},{ws}"
        if not props:
            extra = s.get("additionalProperties", True)
            if extra is False:
                return open_ + close
            value = self.generic(GENERIC_DEPTH - 1) if extra is True else \
                self.convert(extra, f"{where}/additionalProperties", refs)
            item = f"{STRING}{ws}:{ws}{value}"
            return f"{open_}(?:{item}(?:{sep}{item})*)?{close}"
        items = []
        for name, sub in props.items():
            value = self.convert(sub, f"{where}/properties/{name}", refs)
            items.append((f"{self.literal(name)}{ws}:{ws}{value}", name in required))
        first_required = next((i for i, (_, r) in enumerate(items) if r), len(items))
        def alts():
            for i in range(min(first_required, len(items) - 1) + 1):
                parts, size = [items[i][0]], len(items[i][0])
                for pat, req in items[i + 1:]:
                    parts.append(f"{sep}{pat}" if req else f"(?:{sep}{pat})?")
                    size += len(parts[-1])
                    _check_size(size, where)
                yield "".join(parts)
        body = self._alternatives(alts(), where)
        if first_required == len(items):
            body += "?"
        return open_ + body + close

    def array(self, s: Dict, where: str, refs) -> str:
        ws = self.ws
        item = self.convert(s.get("items", True), f"{where}/items", refs)
        lo, hi = int(s.get("minItems", 0)), s.get("maxItems")
        if hi is not None and int(hi) < lo:
            raise ValueError(f"JSON schema at {where}: maxItems {hi} < minItems {lo}")
        open_, close, sep = rf"\[{ws}", rf"{ws}\]", f"{ws},{ws}"
        if hi is not None and int(hi) == 0:
            return open_ + close
        rest_hi = "" if hi is None else str(int(hi) - 1)
        inner = f"{item}(?:{sep}{item}){{{max(lo - 1, 0)},{rest_hi}}}"
        return open_ + (inner if lo > 0 else f"(?:{inner})?") + close

    def generic(self, depth: int) -> str:
        """Any JSON value, nested at most ``depth`` levels."""
        scalar = f"(?:{STRING}|{NUMBER}|{BOOLEAN}|{NULL})"
        if depth <= 0:
            return scalar
        ws, inner = self.ws, self.generic(depth - 1)
        sep = f"{ws},{ws}"
        arr = rf"\[{ws}(?:{inner}(?:{sep}{inner})*)?{ws}\]"
        member = f"{STRING}{ws}:{ws}{inner}"
        obj = rf"\{{{ws}(?:{member}(?:{sep}{member})*)?{ws}\}}"
        return f"(?:{scalar}|{arr}|{obj})"
