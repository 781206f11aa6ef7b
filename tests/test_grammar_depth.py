"""Depth and size limits on client-controlled grammar input (sgl/grammar/limits.py): deep JSON
schemas, deep regexes and schemas whose regex explodes give a ValueError naming the limit, fast,
never a RecursionError or an exhausted machine. No model needed."""

from __future__ import annotations

import json
import time

import pytest

from sgl.grammar.json_schema import build_regex_from_schema
from sgl.grammar.limits import (MAX_JSON_DEPTH, MAX_REGEX_DEPTH, MAX_SCHEMA_DEPTH, MAX_SCHEMA_REGEX_CHARS,
                                check_schema_depth, regex_depth)
from sgl.grammar.nfa import build_nfa


def nested_object(levels: int) -> dict:
    s: dict = {"type": "string"}
    for _ in range(levels):
        s = {"type": "object", "properties": {"a": s}, "required": ["a"]}
    return s


@pytest.mark.parametrize("levels", [MAX_SCHEMA_DEPTH + 1, 100, 5000])
@pytest.mark.parametrize("as_text", [False, True])
def test_deep_schema_names_the_limit(levels, as_text):
    schema = nested_object(levels)
    if as_text:
        schema = json.dumps(schema) if levels < 400 else \
            '{"type": "object", "properties": {"a": ' * levels + '{"type": "string"}' + "}}" * levels
    start = time.perf_counter()
    with pytest.raises(ValueError, match=f"json_schema nesting depth exceeds ({MAX_SCHEMA_DEPTH}|{MAX_JSON_DEPTH})"):
        build_regex_from_schema(schema)
    assert time.perf_counter() - start < 2.0


def test_schema_at_the_limit_compiles():
    regex = build_regex_from_schema(nested_object(MAX_SCHEMA_DEPTH))
    assert build_nfa(regex) is not None and regex_depth(regex) <= MAX_REGEX_DEPTH


@pytest.mark.parametrize("schema", [
    {"anyOf": [{"anyOf": [{"type": "null"}]}]},
    {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}},
])
def test_other_subschema_keywords_count(schema):
    deep = {"type": "null"}
    for _ in range(MAX_SCHEMA_DEPTH + 1):
        deep = {"anyOf": [deep, {"type": "null"}]} if "anyOf" in schema else {"type": "array", "items": deep}
    with pytest.raises(ValueError, match=f"exceeds {MAX_SCHEMA_DEPTH}"):
        build_regex_from_schema(deep)
    build_regex_from_schema(schema)


def test_ref_chain_counts_each_followed_ref():
    defs = {f"d{i}": {"$ref": f"#/$defs/d{i + 1}"} for i in range(200)}
    defs["d200"] = {"type": "integer"}
    with pytest.raises(ValueError, match=f"exceeds {MAX_SCHEMA_DEPTH}"):
        build_regex_from_schema({"$defs": defs, "$ref": "#/$defs/d0"})


def test_deeply_nested_const_value_names_the_document_limit():
    value: list = []
    for _ in range(2000):
        value = [value]
    with pytest.raises(ValueError, match=f"exceeds {MAX_JSON_DEPTH}"):
        check_schema_depth({"const": value})
    with pytest.raises(ValueError, match=f"exceeds {MAX_JSON_DEPTH}"):
        build_regex_from_schema('{"const": ' + "[" * 100000 + "]" * 100000 + "}")


@pytest.mark.parametrize("kind", ["optional", "array"])
def test_exponential_regex_growth_is_refused_early(kind):
    s: dict = {"type": "integer"}
    for _ in range(30):
        if kind == "optional":
            s = {"type": "object", "properties": {"x": {"type": "integer"}, "a": s, "b": {"type": "integer"}}}
        else:
            s = {"type": "array", "items": s}
    start = time.perf_counter()
    with pytest.raises(ValueError, match=f"exceeds {MAX_SCHEMA_REGEX_CHARS} characters"):
        build_regex_from_schema(s)
    assert time.perf_counter() - start < 5.0


def test_many_optional_properties_refused_by_size():
    s = {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(3000)}}
    with pytest.raises(ValueError, match="exceeds"):
        build_regex_from_schema(s)


def test_huge_integer_bound_is_a_value_error():
    with pytest.raises(ValueError, match="at most 100 digits"):
        build_regex_from_schema({"type": "integer", "maximum": 10 ** 2000})


@pytest.mark.parametrize("levels", [MAX_REGEX_DEPTH + 1, 1000, 100000])
def test_deep_regex_names_the_limit(levels):
    start = time.perf_counter()
    with pytest.raises(ValueError, match=f"regex nesting depth exceeds {MAX_REGEX_DEPTH}"):
        build_nfa("(" * levels + "a" + ")" * levels)
    assert time.perf_counter() - start < 2.0


def test_regex_at_the_limit_and_classes_do_not_count():
    build_nfa("(" * MAX_REGEX_DEPTH + "a" + ")" * MAX_REGEX_DEPTH)
    assert regex_depth(r"[(((]\(\((a)") == 1
    assert regex_depth(r"[]((]a") == 0 and regex_depth(r"[^]\]((]a") == 0
