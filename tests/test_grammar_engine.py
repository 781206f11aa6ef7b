"""Constrained decoding through the engine on the bundled model."""

from __future__ import annotations

import json

import jsonschema
import pytest
import regex

import sgl

pytestmark = pytest.mark.slow

IP = r"((25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"


def _chat(engine, q):
    return engine.tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                add_generation_prompt=True)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_regex_outputs_fully_match(engine, temperature):
    prompt = _chat(engine, "What is the IP address of the Google DNS servers?")
    outs = engine.generate([prompt] * 4, {"regex": IP, "temperature": temperature, "max_new_tokens": 32,
                                          "sampling_seed": 3})
    for o in outs:
        assert o["meta_info"]["finish_reason"]["type"] == "stop"
        assert regex.fullmatch(IP, o["text"]), o["text"]


def test_json_schema_output_validates(engine):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                               "age": {"type": "integer"}},
              "required": ["name", "age"]}
    out = engine.generate(_chat(engine, "Describe a person as JSON."),
                          {"json_schema": json.dumps(schema), "temperature": 0, "max_new_tokens": 64})
    data = json.loads(out["text"])
    jsonschema.validate(data, schema)
    assert isinstance(data["age"], int) and len(data["name"]) <= 12


def test_mixed_batch_and_stop_with_regex(engine):
    prompt = _chat(engine, "Pick a fruit.")
    free, constrained, stopped = engine.generate(
        [prompt] * 3,
        [{"temperature": 0, "max_new_tokens": 12},
         {"regex": "(apple|banana|cherry)", "temperature": 0, "max_new_tokens": 12},
         {"regex": "(apple pie|banana split)", "stop": " ", "temperature": 0, "max_new_tokens": 12}])
    assert free["text"] == engine.generate(prompt, {"temperature": 0, "max_new_tokens": 12})["text"]
    assert constrained["text"] in ("apple", "banana", "cherry")
    assert stopped["text"] in ("apple", "banana")
    assert stopped["meta_info"]["finish_reason"] == {"type": "stop", "matched": " "}


def test_length_cut_is_valid_prefix(engine):
    out = engine.generate(_chat(engine, "Give an IP address."), {"regex": IP, "temperature": 1.0,
                                                                   "max_new_tokens": 3, "sampling_seed": 1})
    assert out["meta_info"]["finish_reason"]["type"] in ("length", "stop")
    assert regex.fullmatch(IP, out["text"], partial=True)


def test_jump_forward_same_output_fewer_steps(engine):
    from sgl.grammar.examples import CHARACTER_REGEX  # the tour's JSON character sheet

    prompt = _chat(engine, "Give me the character sheet of Harry Potter as JSON.")
    params = {"regex": CHARACTER_REGEX, "temperature": 0, "max_new_tokens": 256}
    plain = sgl.Engine(log_interval=0, max_total_tokens=4096, **{"grammar.jump_forward": False})
    try:
        s0 = plain.get_server_info()["stats"]
        ref = plain.generate(prompt, params)
        s1 = plain.get_server_info()["stats"]
    finally:
        plain.shutdown()
    a0 = engine.get_server_info()["stats"]
    out = engine.generate(prompt, params)
    a1 = engine.get_server_info()["stats"]
    assert out["text"] == ref["text"]
    assert regex.fullmatch(CHARACTER_REGEX, out["text"])
    steps_plain = (s1["decode_steps"] + s1["prefill_steps"]) - (s0["decode_steps"] + s0["prefill_steps"])
    steps_jf = (a1["decode_steps"] + a1["prefill_steps"]) - (a0["decode_steps"] + a0["prefill_steps"])
    assert steps_jf <= 0.6 * steps_plain, (steps_jf, steps_plain)


@pytest.mark.parametrize("bad", [{"regex": ""}, {"regex": "(ab"}, {"json_schema": "{not json"},
                                 {"json_schema": json.dumps({"type": "object", "patternProperties": {}})}])
def test_bad_grammar_rejected_before_queueing(engine, bad):
    with pytest.raises(ValueError):
        engine.generate("Hi", {**bad, "max_new_tokens": 4})
    assert engine.generate("Hi", {"max_new_tokens": 2})["meta_info"]["completion_tokens"] == 2
