"""Bad input never hurts the server: HTTP 400 with an OpenAI-style error body, then the
next valid request succeeds. Also the Bearer API key and a chat template that rejects
system messages."""

from __future__ import annotations

import pytest
import requests

from sgl.server.serve import BackgroundServer

VALID = {"text": "Hi", "sampling_params": {"max_new_tokens": 1, "temperature": 0.0}}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
LONG = "hello " * 9000  # over the 8192-token context

# (path, raw body or JSON object, word expected in the message)
BAD_INPUTS = [
    ("/generate", b'{"text": "Hi", ', "malformed json"),
    ("/generate", b"", "body is required"),
    ("/generate", {"text": "Hi", "sampling_param": {}}, "sampling_param"),
    ("/generate", {"text": 1}, "text"),
    ("/generate", {"text": "Hi", "stream": "yes"}, "stream"),
    ("/generate", {"text": "Hi", "input_ids": [1, 2]}, "exactly one"),
    ("/generate", {"sampling_params": {}}, "exactly one"),
    ("/generate", {"text": ["a", "b"], "stream": True}, "stream"),
    ("/generate", {"text": "Hi", "sampling_params": {"max_new_tokens": 1, "tempreature": 0}}, "tempreature"),
    ("/generate", {"text": "Hi", "sampling_params": {"max_new_tokens": -1}}, "max_new_tokens"),
    ("/generate", {"text": "Hi", "sampling_params": {"regex": "(unclosed"}}, "regex"),
    ("/generate", {"text": "Hi", "sampling_params": {"json_schema": "{not json"}}, "json_schema"),
    ("/generate", {"text": "Hi", "sampling_params": {"stop": [""]}}, "stop"),
    ("/generate", {"text": LONG}, "context"),
    ("/generate", {"text": "Hi", "return_logprob": True, "top_logprobs_num": 100000}, "top_logprobs_num"),
    ("/generate", {"input_ids": [10**9]}, "input_ids"),
    ("/generate", {"text": "Hi", "image_data": "aGVsbG8="}, "image"),
    ("/v1/chat/completions", b"[1, 2", "malformed json"),
    ("/v1/chat/completions", {**CHAT, "frobnicate": True}, "frobnicate"),
    ("/v1/chat/completions", {**CHAT, "messages": "Hi"}, "messages"),
    ("/v1/chat/completions", {**CHAT, "messages": []}, "messages"),
    ("/v1/chat/completions", {**CHAT, "messages": [{"role": "robot", "content": "x"}]}, "role"),
    ("/v1/chat/completions", {**CHAT, "temperature": 5}, "temperature"),
    ("/v1/chat/completions", {**CHAT, "n": 0}, "n"),
    ("/v1/chat/completions", {**CHAT, "max_tokens": "ten"}, "max_tokens"),
    ("/v1/chat/completions", {**CHAT, "stop": ["\n", ""]}, "stop"),
    ("/v1/chat/completions", {**CHAT, "top_logprobs": 3}, "top_logprobs"),
    ("/v1/chat/completions", {**CHAT, "regex": "[a-"}, "regex"),
    ("/v1/chat/completions", {**CHAT, "response_format": {"type": "json_schema",
                                                           "json_schema": {"name": "x", "schema": {"type": 7}}}},
     "schema"),
    ("/v1/chat/completions", {**CHAT, "response_format": {"type": "xml"}}, "response_format"),
    ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": LONG}]}, "context length"),
    ("/v1/chat/completions", {**CHAT, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ("/v1/completions", {"model": "m", "prompt": []}, "prompt"),
    ("/v1/completions", {"model": "m", "prompt": "Hi", "logprobs": 50}, "logprobs"),
    ("/v1/completions", {"model": "m", "prompt": "Hi", "stop": ""}, "stop"),
    ("/v1/completions", {"model": "m", "prompt": "Hi", "echo": True, "stream": True}, "echo"),
    ("/v1/completions", {"model": "m", "prompt": LONG, "max_tokens": 1}, "context"),
    ("/abort_request", {"rid": 5}, "rid"),
    ("/flush_cache", b"{oops", "malformed json"),
]


@pytest.fixture(scope="module")
def server(engine):
    with BackgroundServer(engine) as srv:
        yield srv


def send(url, body):
    if isinstance(body, bytes):
        return requests.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=120)
    return requests.post(url, json=body, timeout=120)


@pytest.mark.parametrize("path,body,needle", BAD_INPUTS, ids=[f"{p}-{i}" for i, (p, _, _) in enumerate(BAD_INPUTS)])
def test_bad_input_is_400_and_server_keeps_serving(server, path, body, needle):
    res = send(server.url + path, body)
    assert res.status_code == 400, res.text
    err = res.json()["error"]
    assert err["type"] == "invalid_request_error" and err["code"] == 400
    assert needle.lower() in err["message"].lower(), err
    ok = requests.post(server.url + "/generate", json=VALID, timeout=120)
    assert ok.status_code == 200 and ok.json()["meta_info"]["completion_tokens"] == 1


def test_unknown_route_is_json_404(server):
    res = requests.get(server.url + "/nope", timeout=30)
    assert res.status_code == 404 and "error" in res.json()


class _TemplateSwap:
    """The engine, but with a tokenizer whose chat template forbids system messages (as Gemma's)."""

    TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                "{{ raise_exception('System role not supported') }}{% endif %}"
                "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

    def __init__(self, engine):
        import copy

        self._engine = engine
        self.tokenizer = copy.copy(engine.tokenizer)
        self.tokenizer.chat_template = self.TEMPLATE

    def __getattr__(self, name):
        return getattr(self._engine, name)


def test_system_message_rejected_by_template(engine):
    with BackgroundServer(_TemplateSwap(engine)) as srv:
        bad = {**CHAT, "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}
        res = requests.post(srv.url + "/v1/chat/completions", json=bad, timeout=120)
        assert res.status_code == 400
        assert "System role not supported" in res.json()["error"]["message"]
        assert res.json()["error"]["param"] == "messages"
        ok = requests.post(srv.url + "/v1/chat/completions", json=CHAT, timeout=120)
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 1


def test_api_key_required_except_health(engine):
    with BackgroundServer(engine, api_key="s3cret") as srv:
        assert requests.get(srv.url + "/health", timeout=30).status_code == 200
        for path in ("/get_model_info", "/v1/models", "/metrics", "/health_generate"):
            res = requests.get(srv.url + path, timeout=30)
            assert res.status_code == 401 and "API key" in res.json()["error"]["message"]
        wrong = requests.post(srv.url + "/generate", json=VALID, headers={"Authorization": "Bearer nope"}, timeout=30)
        assert wrong.status_code == 401
        good = requests.post(srv.url + "/generate", json=VALID, headers={"Authorization": "Bearer s3cret"},
                             timeout=120)
        assert good.status_code == 200
        info = requests.get(srv.url + "/get_server_info", headers={"Authorization": "Bearer s3cret"}, timeout=30)
        assert info.json()["server"]["api_key"] == "***"
