"""JSON Schema -> regex: every string the regex's DFA generates parses as JSON and
validates against the schema; integer ranges are exact; bad schemas raise."""

from __future__ import annotations

import json
import random
import re

import jsonschema
import numpy as np
import pytest

from sgl.grammar.fsm import ByteDFA
from sgl.grammar.json_schema import build_regex_from_schema, integer_range_regex

CHARACTER = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 12},
        "house": {"enum": ["Gryffindor", "Slytherin", "Ravenclaw", "Hufflepuff"]},
        "age": {"type": "integer", "minimum": 11, "maximum": 120},
        "height": {"type": "number"},
        "alive": {"type": "boolean"},
        "wand": {
            "type": "object",
            "properties": {"wood": {"type": "string", "maxLength": 8}, "length": {"type": "number"},
                           "core": {"$ref": "#/$defs/core"}},
            "required": ["wood", "core"],
        },
        "friends": {"type": "array", "items": {"type": "string", "pattern": "[A-Z][a-z]{1,6}"},
                    "minItems": 1, "maxItems": 3},
        "pet": {"anyOf": [{"type": "null"}, {"const": "owl"}, {"type": "integer", "exclusiveMinimum": 0}]},
        "nickname": {"type": ["string", "null"], "maxLength": 5},
    },
    "required": ["name", "house", "wand"],
    "$defs": {"core": {"enum": ["phoenix feather", "dragon heartstring", "unicorn hair"]}},
    "title": "Character",
}
ALL_OPTIONAL = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "boolean"},
                                                 "c": {"type": "null"}}}
FREE_FORM = {"type": "object", "additionalProperties": {"type": "integer", "maximum": 9}}
ARRAY_OF_OBJECTS = {"type": "array", "items": {"type": "object", "properties": {"id": {"type": "integer"}},
                                               "required": ["id"], "additionalProperties": False},
                    "maxItems": 2}
FORMATS = {"type": "object", "properties": {
    "when": {"type": "string", "format": "date-time"}, "day": {"type": "string", "format": "date"},
    "uuid": {"type": "string", "format": "uuid"}}, "required": ["when", "day", "uuid"]}
ANYTHING = {}


def _weighted_walk(dfa: ByteDFA, rng: random.Random, max_bytes: int = 2000):
    """Random full match; punctuation is favoured so strings and arrays close."""
    state, out = dfa.initial, bytearray()
    while len(out) < max_bytes:
        deg = dfa.degree(state)
        if dfa.accepting[state] and (deg == 0 or rng.random() < 0.5):
            return out.decode("utf-8")
        allowed = np.flatnonzero(dfa.transitions[state] != dfa.dead).tolist()
        weights = [1 if b >= 0x80 or chr(b).isalnum() else 30 for b in allowed]
        b = rng.choices(allowed, weights)[0]
        out.append(b)
        state = dfa.next_state(state, b)
    return None


@pytest.mark.parametrize("schema", [CHARACTER, ALL_OPTIONAL, FREE_FORM, ARRAY_OF_OBJECTS, FORMATS, ANYTHING],
                         ids=["character", "all_optional", "free_form", "array_of_objects", "formats", "anything"])
@pytest.mark.parametrize("ws", [None, r"[\n ]{0,2}"])
def test_generated_json_validates(schema, ws):
    regex = build_regex_from_schema(json.dumps(schema), whitespace_pattern=ws)
    dfa = ByteDFA(regex)
    rng = random.Random(1)
    outs = [o for o in (_weighted_walk(dfa, rng) for _ in range(60)) if o is not None]
    assert len(outs) >= 40
    for text in outs:
        assert re.fullmatch(regex, text)
        jsonschema.validate(json.loads(text), schema)
    if schema is ALL_OPTIONAL:  # any subset of the optional properties, in declaration order
        values = {"a": "1", "b": "true", "c": "null"}
        for mask in range(8):
            keys = [k for i, k in enumerate("abc") if mask >> i & 1]
            text = "{" + ", ".join(f'"{k}": {values[k]}' for k in keys) + "}"
            assert _accepts(dfa, text), text
        assert not _accepts(dfa, '{"b": true, "a": 1}') and not _accepts(dfa, '{"a": 1,}')


def test_properties_keep_declaration_order_and_required_ones_appear():
    dfa = ByteDFA(build_regex_from_schema(CHARACTER))
    rng = random.Random(3)
    for _ in range(30):
        text = _weighted_walk(dfa, rng)
        if text is None:
            continue
        keys = list(json.loads(text))
        order = list(CHARACTER["properties"])
        assert keys == sorted(keys, key=order.index)
        assert {"name", "house", "wand"} <= set(keys)


def _accepts(dfa, s):
    st = dfa.walk(dfa.initial, s.encode())
    return st != dfa.dead and bool(dfa.accepting[st])


def test_draft4_boolean_exclusive_bounds():
    schema = {"$schema": "http://json-schema.org/draft-04/schema#", "type": "integer",
              "minimum": 3, "exclusiveMinimum": True, "maximum": 6, "exclusiveMaximum": True}
    rx = re.compile(build_regex_from_schema(schema))
    assert [i for i in range(10) if rx.fullmatch(str(i))] == [4, 5]


def test_whitespace_pattern_is_used():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    tight = ByteDFA(build_regex_from_schema(schema, whitespace_pattern=""))
    pretty = ByteDFA(build_regex_from_schema(schema, whitespace_pattern=r"[\n ]*"))
    assert _accepts(tight, '{"a":1}') and not _accepts(tight, '{ "a": 1 }')
    assert _accepts(pretty, '{\n  "a": 1\n}') and _accepts(pretty, '{"a":1}')


@pytest.mark.parametrize("lo,hi", [(-15, 123), (0, None), (7, 7), (None, -3), (100, 1000), (-1000, -10),
                                   (None, None), (5, None), (-7, None), (None, 42)])
def test_integer_range_regex_is_exact(lo, hi):
    rx = re.compile(integer_range_regex(lo, hi))
    for i in range(-2100, 2100):
        inside = (lo is None or i >= lo) and (hi is None or i <= hi)
        assert bool(rx.fullmatch(str(i))) == inside, (lo, hi, i)
    for bad in ("007", "-0", "+5", "1.0", ""):
        assert not rx.fullmatch(bad)


@pytest.mark.parametrize("schema,fragment", [
    ('{"type": "object",', "not valid JSON"),
    ({"type": "strin"}, "invalid JSON schema"),
    ({"type": "object", "properties": {"a": {"type": "integer", "minimum": "zero"}}}, "invalid JSON schema"),
    ({"type": "array", "uniqueItems": True}, "keyword 'uniqueItems'"),
    ({"type": "object", "patternProperties": {"^x": {}}}, "keyword 'patternProperties'"),
    ({"properties": {"a": {"not": {"type": "null"}}}}, "keyword 'not' at #/properties/a"),
    ({"$defs": {"n": {"type": "object", "properties": {"next": {"$ref": "#/$defs/n"}}}}, "$ref": "#/$defs/n"},
     "recursive $ref"),
    ({"type": "string", "format": "hostname"}, "string format 'hostname'"),
    ({"type": "number", "minimum": 0}, "keyword 'minimum' for type 'number'"),
    ({"type": "integer", "minimum": 5, "maximum": 1}, "integer range is empty"),
    ({"type": "object", "properties": {"a": False}, "required": ["a"]}, "no value satisfies"),
    ({"$ref": "#/$defs/missing"}, "does not resolve"),
    (["not", "a", "schema"], "must be an object or a boolean"),
])
def test_bad_schema_raises_value_error(schema, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        build_regex_from_schema(schema)


def test_invalid_whitespace_pattern_raises():
    with pytest.raises(ValueError, match="whitespace_pattern"):
        build_regex_from_schema({"type": "integer"}, whitespace_pattern="[")
