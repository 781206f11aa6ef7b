"""Depth and size limits for grammar input a client controls (JSON schemas, regexes).

Every walk over user input here is either iterative or bounded by one of these limits,
checked *before* any recursive code (Python's ``re`` parser, ``jsonschema``, ``json``, our
schema converter) sees the input, so a hostile request gets a ValueError (HTTP 400) that
names the limit, never a RecursionError (HTTP 500) or an exponential blow-up.

- ``MAX_SCHEMA_DEPTH`` (32): subschemas nested in a JSON schema (``properties``, ``items``,
  ``additionalProperties``, ``anyOf`` / ``oneOf`` / ``allOf``, ``$defs``, ``not``, ...; a
  followed ``$ref`` counts as one more level).
- ``MAX_JSON_DEPTH`` (128): objects/arrays nested anywhere in the schema document (e.g. inside
  ``const`` / ``enum`` values).
- ``MAX_REGEX_DEPTH`` (128): groups nested in a regex (``((((a))))`` has depth 4). A schema
  within ``MAX_SCHEMA_DEPTH`` yields a regex well under it.
- ``MAX_SCHEMA_REGEX_CHARS`` (1,000,000): the regex a JSON schema becomes (nested optional
  properties or arrays grow it exponentially); about the size whose automaton reaches the
  NFA's state limit anyway.
- ``MAX_INTEGER_BOUND_DIGITS`` (100): digits of an integer ``minimum`` / ``maximum``.
"""

from __future__ import annotations

from typing import Any

MAX_SCHEMA_DEPTH = 32
MAX_JSON_DEPTH = 128
MAX_REGEX_DEPTH = 128
MAX_SCHEMA_REGEX_CHARS = 1_000_000
MAX_INTEGER_BOUND_DIGITS = 100

# keywords whose value is one subschema / a list of subschemas / a name -> subschema mapping
_SCHEMA_VALUED = {"additionalProperties", "additionalItems", "items", "contains", "not", "if", "then",
                  "else", "propertyNames", "unevaluatedItems", "unevaluatedProperties"}
_SCHEMA_LISTS = {"anyOf", "oneOf", "allOf", "prefixItems", "items"}
_SCHEMA_MAPS = {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}


def schema_depth_error(depth: int) -> ValueError:
    return ValueError(f"json_schema nesting depth exceeds {MAX_SCHEMA_DEPTH} "
                      f"(subschemas nested more than {MAX_SCHEMA_DEPTH} levels deep; got {depth})")


def json_depth_error() -> ValueError:
    return ValueError(f"json_schema nesting depth exceeds {MAX_JSON_DEPTH} "
                      f"(objects/arrays nested more than {MAX_JSON_DEPTH} levels deep in the schema document)")


def check_schema_depth(schema: Any) -> None:
    """Iteratively check a parsed JSON schema against ``MAX_SCHEMA_DEPTH`` and ``MAX_JSON_DEPTH``.

    Raises:
        ValueError: naming the limit that was exceeded.
    """
    # (value, schema depth, container depth, whether value is a schema)
    stack: list[tuple[Any, int, int, bool]] = [(schema, 0, 0, True)]
    while stack:
        value, sdepth, jdepth, is_schema = stack.pop()
        if not isinstance(value, (dict, list)):
            continue
        jdepth += 1
        if jdepth > MAX_JSON_DEPTH:
            raise json_depth_error()
        if isinstance(value, list):
            stack.extend((v, sdepth, jdepth, False) for v in value)
            continue
        if not is_schema:
            stack.extend((v, sdepth, jdepth, False) for v in value.values())
            continue
        for key, sub in value.items():
            if key in _SCHEMA_MAPS and isinstance(sub, dict):
                if sdepth + 1 > MAX_SCHEMA_DEPTH and sub:
                    raise schema_depth_error(sdepth + 1)
                stack.extend((v, sdepth + 1, jdepth + 1, True) for v in sub.values())
            elif key in _SCHEMA_LISTS and isinstance(sub, list):
                if sdepth + 1 > MAX_SCHEMA_DEPTH and sub:
                    raise schema_depth_error(sdepth + 1)
                stack.extend((v, sdepth + 1, jdepth + 1, True) for v in sub)
            elif key in _SCHEMA_VALUED and isinstance(sub, dict):
                if sdepth + 1 > MAX_SCHEMA_DEPTH:
                    raise schema_depth_error(sdepth + 1)
                stack.append((sub, sdepth + 1, jdepth, True))
            else:
                stack.append((sub, sdepth, jdepth, False))


def regex_depth(regex: str) -> int:
    """Deepest group nesting of ``regex`` (escapes and character classes skipped), in one pass."""
    depth = deepest = 0
    i, n = 0, len(regex)
    while i < n:
        c = regex[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":  # a class: ']' right after '[' or '[^' is a literal
            i += 1
            if i < n and regex[i] == "^":
                i += 1
            if i < n and regex[i] == "]":
                i += 1
            while i < n and regex[i] != "]":
                i += 2 if regex[i] == "\\" else 1
        elif c == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif c == ")":
            depth = max(depth - 1, 0)
        i += 1
    return deepest


def check_regex_depth(regex: str, what: str = "regex") -> None:
    """Raises ValueError when ``regex`` nests groups deeper than ``MAX_REGEX_DEPTH``."""
    depth = regex_depth(regex)
    if depth > MAX_REGEX_DEPTH:
        raise ValueError(f"{what} nesting depth exceeds {MAX_REGEX_DEPTH} (groups nested {depth} levels deep)")
