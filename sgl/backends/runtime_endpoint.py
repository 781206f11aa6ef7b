"""``RuntimeEndpoint``: a frontend backend speaking SGLang's native HTTP protocol.

Works against this project's server (``python -m sgl.launch``) and against an
SGLang server: ``POST /generate`` (plain, streamed, batched), ``GET
/get_model_info``, ``GET /get_server_info``, ``POST /flush_cache``.

``select`` against our server follows exactly the algorithm of the in-process
:class:`~sgl.backends.engine_backend.EngineBackend` (same token boundaries via
the server's ``POST /tokenize``, same prefills), so a program makes the same
greedy decisions in-process and over HTTP. Against a server without
``/tokenize`` (SGLang's) it falls back to SGLang's own client algorithm
(``logprob_start_len = prompt_tokens - 2`` and token-healing detection by text).

The chat template is the server model's own: derived from the model's
tokenizer when its files are readable here (``tokenizer_path``, e.g. a server
on this machine), else from the Jinja source the server reports in
``/get_model_info``, else matched by model path like SGLang does.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import requests

from sgl.backends.base import Backend, Prompt, prepare_sampling_params
from sgl.backends.chat_template import ChatTemplate, get_chat_template, match_chat_template, resolve_chat_template
from sgl.backends.scoring import score_by_start, select_by_prompt_logprobs
from sgl.backends.choices import ChoicesDecision, ChoicesSamplingMethod, normalized_logprob
from sgl.backends.sampling_params import SglSamplingParams

logger = logging.getLogger(__name__)


class _JinjaTemplateTokenizer:
    """Just enough of a tokenizer for :func:`derive_chat_template`: renders a chat
    template's Jinja source the way transformers does, without the tokenizer files."""

    def __init__(self, info: Dict[str, Any]):
        self.chat_template = info["chat_template"]
        self.bos_token = info.get("bos_token")
        self.eos_token = info.get("eos_token")
        self.bos_token_id = 0
        self._adds_bos = bool(info.get("add_bos_token"))

    def encode(self, text: str) -> List[int]:
        return [0] if self._adds_bos else []

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False, **kw) -> str:
        from transformers.utils.chat_template_utils import render_jinja_template

        rendered, _ = render_jinja_template(
            conversations=[messages], chat_template=self.chat_template, add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token, eos_token=self.eos_token)
        return rendered[0]


class RuntimeEndpoint(Backend):
    """Backend for a server reachable at ``base_url``.

    Args:
        base_url: e.g. ``"http://127.0.0.1:30000"``.
        api_key: Bearer token, if the server wants one.
        chat_template: a template name or :class:`ChatTemplate` overriding the model's own.
        timeout: seconds to wait for one HTTP response (streams: between chunks).
        verify: TLS verification (``requests``' ``verify``).

    Raises:
        RuntimeError: the server cannot be reached or ``/get_model_info`` fails.
    """

    def __init__(self, base_url: str, api_key: Optional[str] = None,
                 chat_template: Union[str, ChatTemplate, None] = None, timeout: float = 600.0,
                 verify: Any = None):
        super().__init__(chat_template=None)
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.verify = verify
        self._local = threading.local()
        self._template_arg = chat_template
        self._template: Optional[ChatTemplate] = None
        self._tokenize_supported: Optional[bool] = None
        self.model_info = self._http("GET", "/get_model_info").json()

    # -- HTTP ----------------------------------------------------------------------------
    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            if self.api_key:
                session.headers["Authorization"] = f"Bearer {self.api_key}"
        return session

    def _http(self, method: str, path: str, json_body: Any = None, stream: bool = False,
              allow: Tuple[int, ...] = ()) -> requests.Response:
        """One request; non-2xx answers raise (400 -> ValueError with the server's message)."""
        try:
            res = self._session().request(method, self.base_url + path, json=json_body, stream=stream,
                                          timeout=self.timeout, verify=self.verify)
        except requests.RequestException as e:
            raise RuntimeError(f"cannot reach the server at {self.base_url}: {e}") from e
        if res.status_code >= 300 and res.status_code not in allow:
            message = _error_message(res)
            if res.status_code == 400:
                raise ValueError(message)
            raise RuntimeError(f"{method} {path} failed with HTTP {res.status_code}: {message}")
        return res

    def raw_generate(self, data: Dict[str, Any]) -> Any:
        """``POST /generate`` with a ready request body; the parsed JSON answer.

        Raises:
            ValueError: the server rejected the request (HTTP 400; the message is the server's).
            RuntimeError: any other failure.
        """
        return self._http("POST", "/generate", data).json()

    # -- model / template ----------------------------------------------------------------
    def get_model_name(self) -> str:
        return str(self.model_info["model_path"])

    @property
    def supports_images(self) -> bool:  # type: ignore[override]
        info = self.model_info
        return bool(info.get("is_multimodal") or info.get("has_image_understanding"))

    def get_chat_template(self) -> ChatTemplate:
        if self._template is None:
            self._template = resolve_chat_template(self._template_arg, self._model_chat_template)
        return self._template

    def _model_chat_template(self) -> ChatTemplate:
        from sgl.backends.hf_chat_template import chat_template_from_tokenizer, derive_chat_template

        path = str(self.model_info.get("model_path", ""))
        tok_path = self.model_info.get("tokenizer_path")
        if tok_path and os.path.isdir(tok_path):
            try:
                from transformers import AutoTokenizer

                return chat_template_from_tokenizer(AutoTokenizer.from_pretrained(tok_path), path)
            except Exception as e:  # noqa: BLE001 - fall through to the other sources
                logger.info("could not load the tokenizer at %s (%s)", tok_path, e)
        if self.model_info.get("chat_template"):
            try:
                return derive_chat_template(_JinjaTemplateTokenizer(self.model_info), name=f"hf:{path}")
            except Exception as e:  # noqa: BLE001
                logger.warning("could not derive the server's chat template (%s)", e)
        return match_chat_template(path) or get_chat_template("default")

    # -- generation ----------------------------------------------------------------------
    def _request(self, prompt: Prompt, params: SglSamplingParams) -> Dict[str, Any]:
        p = prepare_sampling_params(params)
        data: Dict[str, Any] = {"text": prompt.text, "sampling_params": p.to_srt_kwargs(), **p.logprob_kwargs()}
        self._add_images(prompt, data)
        return data

    @staticmethod
    def _add_images(prompt: Prompt, data: Dict[str, Any]) -> None:
        if prompt.images:
            images = [b64 for _, b64 in prompt.images]
            data["image_data"] = images[0] if len(images) == 1 else images

    def generate(self, prompt: Prompt, sampling_params: SglSamplingParams) -> Tuple[str, Dict[str, Any]]:
        out = self.raw_generate(self._request(prompt, sampling_params))
        return out["text"], out["meta_info"]

    def generate_stream(self, prompt: Prompt, sampling_params: SglSamplingParams
                        ) -> Iterator[Tuple[str, Dict[str, Any]]]:
        data = self._request(prompt, sampling_params)
        data["stream"] = True
        res = self._http("POST", "/generate", data, stream=True)
        pos = 0
        with res:
            for chunk in iter_sse(res):
                text = chunk["text"]
                yield text[pos:], chunk["meta_info"]
                pos = len(text)

    def cache_prefix(self, prefix_text: str) -> None:
        """Prefill ``prefix_text`` (``max_new_tokens=0``) so later requests hit the radix cache."""
        if prefix_text:
            self.raw_generate({"text": prefix_text, "sampling_params": {"max_new_tokens": 0}})

    def commit_lazy_operations(self, prompt: Prompt) -> None:
        if prompt.text:
            data: Dict[str, Any] = {"text": prompt.text, "sampling_params": {"max_new_tokens": 0}}
            self._add_images(prompt, data)
            self.raw_generate(data)

    # -- select --------------------------------------------------------------------------
    def tokenize(self, texts: List[str]) -> Optional[List[List[int]]]:
        """Token ids per text from the server's ``/tokenize``; None if the server has no such route."""
        if self._tokenize_supported is False:
            return None
        res = self._http("POST", "/tokenize", {"text": list(texts)}, allow=(404, 405))
        if res.status_code in (404, 405):
            self._tokenize_supported = False
            return None
        self._tokenize_supported = True
        return res.json()["tokens"]

    def _score(self, input_ids: List[List[int]], starts: List[int]) -> List[dict]:
        return score_by_start(lambda ids, start: self.raw_generate({
            "input_ids": ids, "sampling_params": [{"max_new_tokens": 0, "temperature": 0.0} for _ in ids],
            "return_logprob": True, "logprob_start_len": start, "return_text_in_logprobs": True}),
            input_ids, starts)

    def select(self, prompt: Prompt, choices: List[str], temperature: float,
               choices_method: ChoicesSamplingMethod) -> ChoicesDecision:
        """Score each ``prompt + choice`` with prompt logprobs and let ``choices_method`` pick.

        Raises:
            ValueError: ``temperature > 0`` or a choice that adds no tokens.
        """
        if temperature > 1e-5:
            raise ValueError(f"select(temperature={temperature}): only greedy selection (temperature=0) is supported")
        tokens = self.tokenize([prompt.text] + [prompt.text + c for c in choices])
        if tokens is None:
            return self._select_sglang(prompt, choices, choices_method)
        prefix_ids, full_ids = tokens[0] if prompt.text else [], tokens[1:]
        return select_by_prompt_logprobs(
            prefix_ids, full_ids, choices, choices_method,
            lambda ids: self.raw_generate({"input_ids": ids, "sampling_params": {"max_new_tokens": 0}}),
            self._score)

    def _select_sglang(self, prompt: Prompt, choices: List[str],
                       choices_method: ChoicesSamplingMethod) -> ChoicesDecision:
        """SGLang's client algorithm (python/sglang/lang/backend/runtime_endpoint.py)."""
        data: Dict[str, Any] = {"text": prompt.text, "sampling_params": {"max_new_tokens": 0}}
        self._add_images(prompt, data)
        prompt_len = self.raw_generate(data)["meta_info"]["prompt_tokens"]
        start = max(prompt_len - 2, 0)  # one extra token in case tokenization merges across the boundary
        data = {"text": [prompt.text + c for c in choices],
                "sampling_params": {"max_new_tokens": 0, "temperature": 0},
                "return_logprob": True, "return_text_in_logprobs": True, "logprob_start_len": start}
        self._add_images(prompt, data)
        outs = self.raw_generate(data)
        input_lps = [list(o["meta_info"]["input_token_logprobs"]) for o in outs]
        output_lps = [o["meta_info"].get("output_token_logprobs", []) for o in outs]
        for i, lps in enumerate(input_lps):
            if len(lps) > 1 and lps[0][-1] is not None and prompt.text.endswith(lps[0][-1]):
                input_lps[i] = lps[1:]  # the extra token belongs to the prompt: no healing happened
        unconditional = None
        if choices_method.requires_unconditional_logprobs:
            ids = [[t[1] for t in lps] for lps in input_lps]
            res = self.raw_generate({"input_ids": ids, "sampling_params": {"max_new_tokens": 0},
                                          "return_logprob": True, "logprob_start_len": 0})
            unconditional = [r["meta_info"]["input_token_logprobs"] for r in res]
        return choices_method(choices=list(choices), normalized_prompt_logprobs=[normalized_logprob(x) for x in input_lps],
                              input_token_logprobs=input_lps, output_token_logprobs=output_lps,
                              unconditional_token_logprobs=unconditional)

    # -- admin ---------------------------------------------------------------------------
    def flush_cache(self) -> bool:
        """Drop the server's prefix cache; False when the server refused (requests running)."""
        res = self._http("POST", "/flush_cache", {"empty_cache": True}, allow=(400,))
        return res.status_code == 200

    def get_server_info(self) -> Dict[str, Any]:
        return self._http("GET", "/get_server_info").json()


def _error_message(res: requests.Response) -> str:
    try:
        body = res.json()
    except ValueError:
        return res.text.strip() or res.reason
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message"))
    if isinstance(body, dict) and "message" in body:
        return str(body["message"])
    return json.dumps(body)


def iter_sse(res: requests.Response) -> Iterator[Dict[str, Any]]:
    """The JSON payloads of an SSE response up to ``data: [DONE]``.

    Raises:
        RuntimeError: the server reported an error inside the stream.
    """
    for line in res.iter_lines(decode_unicode=False):
        if not line or not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            return
        chunk = json.loads(payload)
        if isinstance(chunk, dict) and "error" in chunk and "text" not in chunk:
            raise RuntimeError(f"server error during streaming: {_error_message_from(chunk)}")
        yield chunk


def _error_message_from(body: Dict[str, Any]) -> str:
    err = body.get("error")
    return str(err.get("message")) if isinstance(err, dict) else str(err)
