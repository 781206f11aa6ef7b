"""``OpenAI``: a frontend backend for any OpenAI-compatible API (OpenAI, our ``/v1``, SGLang, vLLM).

Chat models (the default) get the program's finished messages
(``Prompt.messages``); ``gen`` must therefore open a whole assistant turn
(``assistant(gen(...))``), because a chat API cannot continue a half-written
message. Completion models (``is_chat_model=False``) get the prompt text.

Constraints are never dropped silently:

- ``regex`` (and ``dtype``, which becomes a regex) is sent as the ``regex``
  request extension when the server is sgl or SGLang (detected from
  ``/v1/models``' ``owned_by``, or forced with ``extensions=True``); any other
  API raises ``ValueError``.
- ``json_schema`` becomes ``response_format={"type": "json_schema", ...}`` on
  chat models (OpenAI's structured outputs); on completion models it needs the
  extension too.
- Sampling knobs OpenAI lacks (``top_k``, ``min_p``, ``min_new_tokens``,
  ``stop_token_ids``, ``ignore_eos``) go as extensions where supported and
  otherwise are ignored with a one-time warning (they change the distribution,
  not the output's shape).

``select`` scores each ``prompt + choice`` with ``/v1/completions``
(``echo=True, logprobs=0, max_tokens=0``): the logprobs of the tokens that
overlap the choice are the same numbers the native backends use (a token that
straddles the boundary counts for the choice, as in the engine backend). Where
that is impossible (chat models, or an API that rejects echo with logprobs)
the documented fallback is *greedy prefix matching*: one greedy completion of
the prompt (``max_tokens=16``) and the choice sharing the longest prefix with
it (as a fraction of the choice's length, ignoring case) wins, ties going to
the first; the
decision's meta info then says ``"select_method": "prefix_match"`` and has no
logprobs.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

from sgl.backends.base import Backend, Prompt, prepare_sampling_params
from sgl.backends.chat_template import ChatTemplate, get_chat_template
from sgl.backends.choices import ChoicesDecision, ChoicesSamplingMethod, normalized_logprob
from sgl.backends.sampling_params import SglSamplingParams

logger = logging.getLogger(__name__)

#: Renders roles as plain text; only used for ``state.text()`` of chat programs.
CHAT_API_TEMPLATE = ChatTemplate(name="chat_api", default_system_prompt=None,
                                 role_prefix_and_suffix={r: ("", "\n") for r in ("system", "user", "assistant")})

_COMPLETION_MODEL_MARKERS = ("instruct", "davinci", "babbage")
_EXTENSION_OWNERS = ("sgl", "sglang")
_EXTRA_DEFAULTS = {"top_k": -1, "min_p": 0.0, "min_new_tokens": None, "stop_token_ids": None, "ignore_eos": False}
_EXTRA_NAMES = {"min_new_tokens": "min_tokens"}
PREFIX_MATCH_TOKENS = 16


class OpenAI(Backend):
    """Backend for an OpenAI-compatible API.

    Args:
        model: model id (``client.models.list()`` shows the server's).
        base_url: API root, e.g. ``"http://127.0.0.1:30000/v1"``; None = api.openai.com.
        api_key: Bearer key; None = ``$OPENAI_API_KEY``, or ``"EMPTY"`` with a ``base_url``.
        is_chat_model: chat (messages) or completion (text) API; None guesses from
            ``model`` (``*instruct*``/``davinci``/``babbage`` are completion models).
        chat_template: template name or object for rendering ``state.text()``.
        extensions: whether the server takes sgl/SGLang request extensions
            (``regex``, ``top_k``, ...); None detects it from ``/v1/models``.
        **client_kwargs: passed to ``openai.OpenAI`` (timeout, max_retries, ...).
    """

    def __init__(self, model: Optional[str] = None, base_url: Optional[str] = None, api_key: Optional[str] = None,
                 is_chat_model: Optional[bool] = None, chat_template: Union[str, ChatTemplate, None] = None,
                 extensions: Optional[bool] = None, model_name: Optional[str] = None, **client_kwargs: Any):
        import os

        import openai

        model = model or model_name
        if not model:
            raise ValueError("model: the model id is required")
        if isinstance(chat_template, str):
            chat_template = get_chat_template(chat_template)
        super().__init__(chat_template=chat_template or CHAT_API_TEMPLATE)
        if api_key is None and base_url is not None and not os.environ.get("OPENAI_API_KEY"):
            api_key = "EMPTY"
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, **client_kwargs)
        self.model_name = model
        if is_chat_model is None:
            is_chat_model = not any(m in model.lower() for m in _COMPLETION_MODEL_MARKERS)
        self.is_chat_model = bool(is_chat_model)
        self._extensions = extensions
        self._warned: set = set()
        self._lock = threading.Lock()
        self._echo_scoring_ok: Optional[bool] = None

    def get_model_name(self) -> str:
        return self.model_name

    # -- capabilities ----------------------------------------------------------------------
    @property
    def supports_extensions(self) -> bool:
        """True when the server takes ``regex``/``top_k``/... (an sgl or SGLang server)."""
        if self._extensions is None:
            try:
                owners = {getattr(m, "owned_by", "") for m in self.client.models.list().data}
            except Exception as e:  # noqa: BLE001 - any failure means "cannot tell": no extensions
                logger.info("could not list models (%s); assuming no request extensions", e)
                owners = set()
            self._extensions = any(o in _EXTENSION_OWNERS for o in owners)
        return self._extensions

    def _warn_once(self, key: str, message: str) -> None:
        with self._lock:
            if key in self._warned:
                return
            self._warned.add(key)
        logger.warning(message)

    # -- request building -------------------------------------------------------------------
    def _kwargs(self, params: SglSamplingParams) -> Dict[str, Any]:
        """OpenAI keyword arguments for one call (see the module docstring for constraints).

        Raises:
            ValueError: a regex/dtype (or, on completion models, a JSON schema) the API cannot enforce.
        """
        p = prepare_sampling_params(params)
        stop = [p.stop] if isinstance(p.stop, str) else list(p.stop or [])
        kwargs = {k: v for k, v in {
            "max_tokens": p.max_new_tokens, "stop": stop or None, "temperature": p.temperature, "top_p": p.top_p,
            "frequency_penalty": p.frequency_penalty, "presence_penalty": p.presence_penalty}.items()
            if v is not None}
        extra: Dict[str, Any] = {}
        for name, default in _EXTRA_DEFAULTS.items():
            value = getattr(p, name)
            if value is None or value == default or value == []:
                continue
            if self.supports_extensions:
                extra[_EXTRA_NAMES.get(name, name)] = value
            else:
                self._warn_once(name, f"{name}={value!r} has no OpenAI API equivalent and is ignored")
        if p.regex is not None:
            if not self.supports_extensions:
                raise ValueError(f"regex-constrained generation (regex or dtype) is not supported by the API at "
                                 f"{self.client.base_url}; use an sgl/SGLang server or the local backend")
            extra["regex"] = p.regex
        if p.json_schema is not None:
            schema = json.loads(p.json_schema) if isinstance(p.json_schema, str) else p.json_schema
            if self.is_chat_model or self.supports_extensions:
                kwargs["response_format"] = {"type": "json_schema",
                                             "json_schema": {"name": "output", "schema": schema}}
            else:
                raise ValueError("json_schema on a completion model needs an sgl/SGLang server")
        if p.return_logprob:
            self._warn_once("logprob", "return_logprob is not forwarded by the OpenAI backend")
        if extra:
            kwargs["extra_body"] = extra
        return kwargs

    def _messages(self, prompt: Prompt) -> List[Dict[str, Any]]:
        if prompt.cur_role != "assistant" or prompt.cur_role_text.strip():
            raise ValueError("with an OpenAI chat model, gen() must open a whole assistant turn: write "
                             "assistant(gen(...)) with nothing before gen() inside the turn "
                             "(or use is_chat_model=False with a completion model)")
        return [dict(m) for m in prompt.messages]

    @staticmethod
    def _meta(resp: Any, finish_reason: Optional[str]) -> Dict[str, Any]:
        usage = getattr(resp, "usage", None)
        details = getattr(usage, "prompt_tokens_details", None) if usage is not None else None
        return {
            "id": getattr(resp, "id", None),
            "prompt_tokens": getattr(usage, "prompt_tokens", None),
            "completion_tokens": getattr(usage, "completion_tokens", None),
            "cached_tokens": getattr(details, "cached_tokens", None) if details is not None else None,
            "finish_reason": {"type": finish_reason} if finish_reason else None,
        }

    # -- generation -----------------------------------------------------------------------------
    def generate(self, prompt: Prompt, sampling_params: SglSamplingParams) -> Tuple[str, Dict[str, Any]]:
        kwargs = self._kwargs(sampling_params)
        if self.is_chat_model:
            resp = self.client.chat.completions.create(model=self.model_name, messages=self._messages(prompt),
                                                       **kwargs)
            choice = resp.choices[0]
            return choice.message.content or "", self._meta(resp, choice.finish_reason)
        resp = self.client.completions.create(model=self.model_name, prompt=prompt.text, **kwargs)
        choice = resp.choices[0]
        return choice.text, self._meta(resp, choice.finish_reason)

    def generate_stream(self, prompt: Prompt, sampling_params: SglSamplingParams
                        ) -> Iterator[Tuple[str, Dict[str, Any]]]:
        kwargs = self._kwargs(sampling_params)
        if self.is_chat_model:
            stream = self.client.chat.completions.create(model=self.model_name, messages=self._messages(prompt),
                                                         stream=True, **kwargs)
        else:
            stream = self.client.completions.create(model=self.model_name, prompt=prompt.text, stream=True,
                                                    **kwargs)
        for chunk in stream:
            if not chunk.choices:
                continue
            choice = chunk.choices[0]
            delta = (choice.delta.content if self.is_chat_model else choice.text) or ""
            if delta or choice.finish_reason:
                yield delta, self._meta(chunk, choice.finish_reason)

    # -- select ---------------------------------------------------------------------------------
    def _echo_scores(self, texts: List[str], starts: List[int]) -> Optional[List[List[Tuple]]]:
        """Per text, ``(logprob, None, token)`` triples of the tokens ending after ``starts[i]`` chars,
        via an echo completion; None when the API cannot do it."""
        if self.is_chat_model or self._echo_scoring_ok is False:
            return None
        try:
            resp = self.client.completions.create(model=self.model_name, prompt=texts, max_tokens=0, echo=True,
                                                  logprobs=0, temperature=0)
        except Exception as e:  # noqa: BLE001 - the API refuses echo+logprobs: use the fallback
            self._echo_scoring_ok = False
            self._warn_once("echo", f"the API cannot score text with echo+logprobs ({e}); "
                                    "select falls back to greedy prefix matching")
            return None
        self._echo_scoring_ok = True
        out: List[List[Tuple]] = [[] for _ in texts]
        for choice in resp.choices:
            lp = choice.logprobs
            for tok, val, off in zip(lp.tokens, lp.token_logprobs, lp.text_offset):
                if off + len(tok) > starts[choice.index]:
                    out[choice.index].append((val, None, tok))
        return out

    def select(self, prompt: Prompt, choices: List[str], temperature: float,
               choices_method: ChoicesSamplingMethod) -> ChoicesDecision:
        """Pick a choice by echo-logprob scoring, else by greedy prefix matching (module docstring).

        Raises:
            ValueError: ``temperature > 0``.
        """
        if temperature > 1e-5:
            raise ValueError(f"select(temperature={temperature}): only greedy selection (temperature=0) is supported")
        scored = self._echo_scores([prompt.text + c for c in choices], [len(prompt.text)] * len(choices))
        if scored is not None and all(any(t[0] is not None for t in s) for s in scored):
            unconditional = None
            if choices_method.requires_unconditional_logprobs:
                unconditional = self._echo_scores(list(choices), [0] * len(choices))
            return choices_method(choices=list(choices),
                                  normalized_prompt_logprobs=[normalized_logprob(s) for s in scored],
                                  input_token_logprobs=scored, output_token_logprobs=[[] for _ in choices],
                                  unconditional_token_logprobs=unconditional)
        return self._select_prefix_match(prompt, choices)

    def _select_prefix_match(self, prompt: Prompt, choices: List[str]) -> ChoicesDecision:
        params = SglSamplingParams.overrides(max_new_tokens=PREFIX_MATCH_TOKENS, temperature=0.0)
        text, _ = self.generate(prompt, SglSamplingParams().merged(params))
        text = text.lstrip() if not any(c[:1].isspace() for c in choices) else text
        folded = text.casefold()
        scores = []
        for c in choices:
            c = c.casefold()
            n = 0
            while n < min(len(c), len(folded)) and c[n] == folded[n]:
                n += 1
            scores.append(n / max(len(c), 1))
        best = max(range(len(choices)), key=scores.__getitem__)
        return ChoicesDecision(choices[best], {"select_method": "prefix_match", "generated": text,
                                               "prefix_match_scores": scores, "normalized_prompt_logprobs": None})
