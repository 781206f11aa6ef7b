"""SamplingParams: defaults, from_dict parsing, normalization, verify errors."""

import json
import math

import pytest

from sgl.engine.sampling.sampling_params import SamplingParams

VOCAB = 100


def test_defaults_match_sglang():
    p = SamplingParams()
    assert (p.max_new_tokens, p.min_new_tokens, p.temperature, p.top_p, p.top_k, p.min_p) == (
        128, 0, 1.0, 1.0, -1, 0.0)
    assert (p.frequency_penalty, p.presence_penalty, p.repetition_penalty) == (0.0, 0.0, 1.0)
    assert (p.ignore_eos, p.skip_special_tokens, p.spaces_between_special_tokens, p.no_stop_trim) == (
        False, True, True, False)
    assert p.stop is None and p.stop_token_ids is None and p.n == 1 and p.sampling_seed is None
    assert not p.is_greedy
    p.verify(VOCAB)


def test_from_dict_none_and_empty():
    assert SamplingParams.from_dict(None) == SamplingParams().normalize()
    assert SamplingParams.from_dict({}).stop == []


def test_from_dict_unknown_key_lists_allowed():
    with pytest.raises(ValueError) as e:
        SamplingParams.from_dict({"max_tokens": 3, "temperature": 0.5})
    msg = str(e.value)
    assert "max_tokens" in msg and "max_new_tokens" in msg and "top_p" in msg


def test_from_dict_not_a_dict():
    with pytest.raises(ValueError, match="dict"):
        SamplingParams.from_dict([("temperature", 1.0)])


@pytest.mark.parametrize("key,value", [
    ("max_new_tokens", 1.5), ("max_new_tokens", "16"), ("max_new_tokens", True),
    ("top_k", 2.0), ("temperature", "hot"), ("stop_regex", 3), ("stop_regex", ["a", None]),
    ("top_p", True), ("ignore_eos", 1), ("stop", 5), ("stop", ["a", 3]),
    ("stop_token_ids", [1, "2"]), ("stop_token_ids", 7), ("regex", 3),
    ("json_schema", 3), ("sampling_seed", 1.5), ("seed", "x"), ("logit_bias", [1, 2]),
    ("logit_bias", {"a": 1.0}), ("logit_bias", {1: "x"}), ("stream_interval", 2.5),
])
def test_from_dict_wrong_type_names_field(key, value):
    with pytest.raises(ValueError) as e:
        SamplingParams.from_dict({key: value})
    assert ("sampling_seed" if key == "seed" else key) in str(e.value)


def test_explicit_null_means_default():
    p = SamplingParams.from_dict({"n": None, "temperature": None, "max_new_tokens": None,
                                  "stop": None, "stop_regex": None, "ignore_eos": None})
    assert p == SamplingParams().normalize()


def test_sglang_frontend_payload_is_accepted():
    # what sglang.lang.ir.SglSamplingParams.to_srt_kwargs() sends, plus RuntimeEndpoint's extras
    payload = {"max_new_tokens": 16, "min_new_tokens": 0, "n": 1, "stop": [], "stop_token_ids": [],
               "stop_regex": [], "temperature": 0.0, "top_p": 1.0, "top_k": -1, "min_p": 0.0,
               "frequency_penalty": 0.0, "presence_penalty": 0.0, "ignore_eos": False,
               "regex": None, "json_schema": None, "skip_special_tokens": True,
               "spaces_between_special_tokens": True}
    p = SamplingParams.from_dict(payload)
    p.verify(VOCAB)
    assert p.is_greedy and p.stop == [] and p.stop_regex == [] and p.max_new_tokens == 16


def test_seed_alias_and_conflict():
    assert SamplingParams.from_dict({"seed": 42}).sampling_seed == 42
    assert SamplingParams.from_dict({"sampling_seed": 7, "seed": None}).sampling_seed == 7
    with pytest.raises(ValueError, match="seed"):
        SamplingParams.from_dict({"seed": 1, "sampling_seed": 2})


def test_normalize_stop_schema_bias():
    p = SamplingParams.from_dict({"stop": "\n", "json_schema": {"type": "object"},
                                  "logit_bias": {"5": -1, 7: 2.5}})
    assert p.stop == ["\n"]
    assert isinstance(p.json_schema, str) and json.loads(p.json_schema) == {"type": "object"}
    assert p.logit_bias == {5: -1.0, 7: 2.5}
    p.verify(VOCAB)
    q = SamplingParams(stop=("a", "b")).normalize()
    assert q.stop == ["a", "b"]
    assert SamplingParams(stop="x").stop_strs == ["x"]


def test_is_greedy():
    assert SamplingParams(temperature=0.0).is_greedy
    assert SamplingParams(temperature=1e-9).is_greedy
    assert SamplingParams(top_k=1, temperature=0.7).is_greedy
    assert not SamplingParams(temperature=0.01).is_greedy
    assert not SamplingParams(top_k=2).is_greedy


def test_zero_max_new_tokens_is_valid():
    p = SamplingParams(max_new_tokens=0)
    assert p.verify(VOCAB) is None and p.max_new_tokens == 0  # verify raises on invalid values


def test_boundary_values_are_valid():
    edge = SamplingParams(temperature=100.0, top_p=1.0, top_k=1, min_p=1.0, frequency_penalty=-2.0,
                          presence_penalty=2.0, repetition_penalty=2.0, min_new_tokens=128,
                          stop_token_ids=[0, VOCAB - 1], logit_bias={VOCAB - 1: 100.0})
    assert edge.verify(VOCAB) is None  # verify raises on invalid values
    assert SamplingParams(min_p=0.0, top_k=VOCAB * 10).verify(VOCAB) is None


@pytest.mark.parametrize("kwargs,field", [
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(min_new_tokens=-1), "min_new_tokens"),
    (dict(max_new_tokens=4, min_new_tokens=5), "min_new_tokens"),
    (dict(temperature=-0.1), "temperature"),
    (dict(temperature=100.5), "temperature"),
    (dict(temperature=math.nan), "temperature"),
    (dict(temperature=math.inf), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.01), "top_p"),
    (dict(top_p=math.nan), "top_p"),
    (dict(top_k=0), "top_k"),
    (dict(top_k=-2), "top_k"),
    (dict(min_p=-0.01), "min_p"),
    (dict(min_p=1.5), "min_p"),
    (dict(min_p=math.nan), "min_p"),
    (dict(frequency_penalty=2.01), "frequency_penalty"),
    (dict(frequency_penalty=-2.01), "frequency_penalty"),
    (dict(frequency_penalty=-math.inf), "frequency_penalty"),
    (dict(presence_penalty=-3.0), "presence_penalty"),
    (dict(presence_penalty=math.nan), "presence_penalty"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(repetition_penalty=2.5), "repetition_penalty"),
    (dict(repetition_penalty=math.nan), "repetition_penalty"),
    (dict(stop=""), "stop"),
    (dict(stop=["ok", ""]), "stop"),
    (dict(stop_regex="a("), "stop_regex"),
    (dict(stop_regex=["ok", ""]), "stop_regex"),
    (dict(stop_token_ids=[VOCAB]), "stop_token_ids"),
    (dict(stop_token_ids=[-1]), "stop_token_ids"),
    (dict(stop_token_ids=[1.0]), "stop_token_ids"),
    (dict(regex="a+", json_schema="{}"), "regex"),
    (dict(n=0), "n"),
    (dict(stream_interval=0), "stream_interval"),
    (dict(logit_bias={VOCAB: 1.0}), "logit_bias"),
    (dict(logit_bias={3: math.nan}), "logit_bias"),
    (dict(max_new_tokens=3.0), "max_new_tokens"),
])
def test_verify_errors_name_field(kwargs, field):
    with pytest.raises(ValueError) as e:
        SamplingParams(**kwargs).verify(VOCAB)
    assert field in str(e.value)


def test_round_trip_to_dict():
    p = SamplingParams.from_dict({"temperature": 0.3, "stop": ["x"], "n": 2, "seed": 5})
    assert SamplingParams.from_dict(p.to_dict()) == p
