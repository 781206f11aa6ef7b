"""The frontend over HTTP: ``RuntimeEndpoint`` against our server gives the same greedy
results as the in-process ``EngineBackend``; ``Runtime`` starts and stops a server process."""

from __future__ import annotations

import importlib.util
import re
import socket
from pathlib import Path

import pytest
import requests

from sgl.backends.engine_backend import EngineBackend
from sgl.backends.runtime_endpoint import RuntimeEndpoint
from sgl.lang import (assistant, function, gen, greedy_token_selection, select, set_default_backend,
                      token_length_normalized, unconditional_likelihood_normalized, user)
from sgl.backends.sampling_params import SglSamplingParams
from sgl.backends.base import Prompt
from sgl.server.serve import BackgroundServer

TOUR_PATH = Path(__file__).resolve().parent.parent / "experiments" / "frontend_tour.py"
TOUR_CAP = 12


def load_tour():
    spec = importlib.util.spec_from_file_location("frontend_tour_for_tests", TOUR_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def server(engine):
    with BackgroundServer(engine, log_requests=False) as srv:
        yield srv


@pytest.fixture(scope="module")
def endpoint(server):
    return RuntimeEndpoint(server.url)


@pytest.fixture(scope="module")
def local(engine):
    return EngineBackend(engine=engine)


def run_tour_cells(backend, engine, capsys) -> list:
    """Every tour cell on ``backend`` from an empty cache; (title, printed output) per cell."""
    tour = load_tour()
    assert engine.flush_cache()
    set_default_backend(backend)
    capsys.readouterr()
    outputs = []
    reason = tour.grammar_unavailable_reason(engine)
    for title, cell in tour.build_cells(lambda n: min(n, TOUR_CAP), 0.0, reason):
        cell()
        # Cache statistics depend on which concurrent fork the scheduler admitted first; drop them.
        lines = [line for line in capsys.readouterr().out.splitlines() if "cached prompt tokens" not in line]
        outputs.append((title, "\n".join(lines)))
    return outputs


def _split_floats(text):
    """(text with every decimal number replaced by '#', the numbers as floats)."""
    pattern = r"-?\d+\.\d+(?:e-?\d+)?"
    return re.sub(pattern, "#", text), [float(x) for x in re.findall(pattern, text)]


def test_frontend_tour_same_through_runtime_endpoint(endpoint, local, engine, capsys):
    in_process = run_tour_cells(local, engine, capsys)
    over_http = run_tour_cells(endpoint, engine, capsys)
    assert len(in_process) == 9
    for (title, a), (_, b) in zip(in_process, over_http):
        # Text must match exactly; printed scores only to float noise (batch composition differs).
        text_a, nums_a = _split_floats(a)
        text_b, nums_b = _split_floats(b)
        assert text_a == text_b, f"cell {title!r} differs:\n--- in-process\n{a}\n--- RuntimeEndpoint\n{b}"
        assert nums_b == pytest.approx(nums_a, abs=1e-4), f"cell {title!r} scores differ"
    assert "SKIPPED" not in "".join(out for _, out in in_process)


def test_chat_template_is_the_models(endpoint, local):
    assert endpoint.get_chat_template().role_prefix_and_suffix == local.get_chat_template().role_prefix_and_suffix
    assert endpoint.get_chat_template().default_system_prompt == local.get_chat_template().default_system_prompt


@pytest.mark.parametrize("method", [token_length_normalized, greedy_token_selection,
                                    unconditional_likelihood_normalized])
def test_select_scores_match_in_process(endpoint, local, method):
    prompt = Prompt(text="Q: Which animal says moo?\nA: The")
    choices = [" cow", " dog", " horse"]
    a = local.select(prompt, choices, 0.0, method)
    b = endpoint.select(prompt, choices, 0.0, method)
    assert a.decision == b.decision == " cow"
    assert b.meta_info["normalized_prompt_logprobs"] == pytest.approx(a.meta_info["normalized_prompt_logprobs"],
                                                                      abs=1e-4)


def test_generate_stream_concatenates_to_generate(endpoint):
    prompt = Prompt(text="The three primary colors are")
    params = SglSamplingParams().merged(SglSamplingParams.overrides(max_new_tokens=8, temperature=0.0))
    text, meta = endpoint.generate(prompt, params)
    pieces = list(endpoint.generate_stream(prompt, params))
    assert "".join(p for p, _ in pieces) == text and meta["completion_tokens"] == 8
    assert pieces[-1][1]["finish_reason"]["type"] == "length"


def test_bad_request_raises_value_error(endpoint):
    params = SglSamplingParams().merged(SglSamplingParams.overrides(max_new_tokens=2, regex="(oops"))
    with pytest.raises(ValueError, match="regex"):
        endpoint.generate(Prompt(text="Hi"), params)


def test_admin_calls(endpoint):
    assert endpoint.flush_cache() is True
    info = endpoint.get_server_info()
    assert info["cache_total_tokens"] == 0 and info["max_total_num_tokens"] > 0


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_runtime_child_process_with_api_key():
    from sgl.backends.runtime import Runtime

    @function
    def qa(s):
        s += user("Is water wet? Answer yes or no.")
        s += assistant(select("answer", choices=["yes", "no"]) + ". " + gen("why", max_tokens=4))

    with Runtime(api_key="k3y", log_interval=0, max_total_tokens=4096, launch_timeout=300) as runtime:
        assert requests.get(runtime.url + "/get_model_info", timeout=30).status_code == 401
        state = qa.run(backend=runtime, temperature=0)
        assert state["answer"] in ("yes", "no") and state.get_meta_info("why")["completion_tokens"] == 4
        assert runtime.get_server_info()["max_total_num_tokens"] == 4096
        port, pid = runtime.port, runtime.process.pid
    assert runtime.process is None and not _port_open(port)
    with pytest.raises(ProcessLookupError):
        import os
        os.kill(pid, 0)


def test_runtime_rejects_unknown_options_before_starting():
    from sgl.backends.runtime import Runtime

    with pytest.raises(ValueError, match="tp_size"):
        Runtime(tp_size=2)
