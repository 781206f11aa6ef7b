"""The ``OpenAI`` frontend backend against our own ``/v1`` routes."""

from __future__ import annotations

import json
import re

import pytest

from sgl.backends.engine_backend import EngineBackend
from sgl.backends.openai_backend import OpenAI
from sgl.lang import assistant, function, gen, select, system, user
from sgl.server.serve import BackgroundServer


@function
def qa(s, question):
    s += system("You are a helpful assistant.")
    s += user(question)
    s += assistant(gen("answer", max_tokens=8))


@function
def completion_select(s):
    s += "Q: Which animal says moo?\nA: The" + select("animal", choices=[" cow", " dog", " horse"])


@pytest.fixture(scope="module")
def server(engine):
    with BackgroundServer(engine, log_requests=False) as srv:
        yield srv


@pytest.fixture(scope="module")
def chat_backend(server):
    return OpenAI("m", base_url=server.url + "/v1")


@pytest.fixture(scope="module")
def completion_backend(server, engine):
    return OpenAI("m", base_url=server.url + "/v1", is_chat_model=False)


def test_chat_program_matches_in_process(chat_backend, engine):
    remote = qa.run(question="What is the capital of France?", backend=chat_backend, temperature=0)
    local = qa.run(question="What is the capital of France?", backend=EngineBackend(engine=engine), temperature=0)
    assert remote["answer"] == local["answer"] and remote["answer"]
    meta = remote.get_meta_info("answer")
    assert meta["completion_tokens"] == local.get_meta_info("answer")["completion_tokens"]
    assert meta["prompt_tokens"] == local.get_meta_info("answer")["prompt_tokens"]


def test_chat_stream(chat_backend):
    state = qa.run(question="Name a color.", backend=chat_backend, temperature=0, stream=True)
    pieces = list(state.text_iter("answer"))
    assert "".join(pieces) == state["answer"] and len(pieces) >= 2


def test_completion_select_scores_like_in_process(completion_backend, engine):
    remote = completion_select.run(backend=completion_backend)
    local = completion_select.run(backend=EngineBackend(engine=engine))
    assert remote["animal"] == local["animal"] == " cow"
    assert remote.get_meta_info("animal")["normalized_prompt_logprobs"] == pytest.approx(
        local.get_meta_info("animal")["normalized_prompt_logprobs"], abs=1e-4)


def test_chat_select_uses_documented_fallback(chat_backend):
    @function
    def yes_no(s):
        s += user("Is fire hot? Answer yes or no.")
        s += assistant(select("answer", choices=["yes", "no"]))

    state = yes_no.run(backend=chat_backend)
    meta = state.get_meta_info("answer")
    assert meta["select_method"] == "prefix_match" and state["answer"] in ("yes", "no")
    best = max(range(2), key=meta["prefix_match_scores"].__getitem__)
    assert state["answer"] == ["yes", "no"][best]


def test_constraints_enforced_or_refused(server, chat_backend):
    @function
    def ip(s):
        s += user("What is the IP address of the Google DNS server?")
        s += assistant(gen("ip", regex=r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", max_tokens=16))

    assert chat_backend.supports_extensions
    assert re.fullmatch(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", ip.run(backend=chat_backend, temperature=0)["ip"])
    plain_api = OpenAI("m", base_url=server.url + "/v1", extensions=False)
    with pytest.raises(ValueError, match="regex"):
        ip.run(backend=plain_api, temperature=0)


def test_json_schema_on_chat_model(chat_backend):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10}},
              "required": ["city"], "additionalProperties": False}

    @function
    def city(s):
        s += user("Name a city as JSON.")
        s += assistant(gen("out", json_schema=json.dumps(schema), max_tokens=24))

    out = json.loads(city.run(backend=chat_backend, temperature=0)["out"])
    assert set(out) == {"city"} and isinstance(out["city"], str)


def test_gen_must_open_the_assistant_turn(chat_backend):
    @function
    def prefixed(s):
        s += user("Hi")
        s += assistant("Sure: " + gen("x", max_tokens=2))

    with pytest.raises(ValueError, match="whole assistant turn"):
        prefixed.run(backend=chat_backend)
