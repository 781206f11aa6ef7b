"""Request schemas of the native (SGLang-compatible) routes.

The wire format is SGLang's ``/generate`` protocol, so that SGLang's own
``RuntimeEndpoint`` and ``Runtime`` clients work unchanged against this server.
Unknown fields are rejected (``extra="forbid"``) and types are checked strictly
(``"true"`` is not a bool), so typos surface as HTTP 400 instead of being
silently ignored. A few fields SGLang clients always send but that this
runtime does not implement (``lora_path``, ``custom_logit_processor``, ...)
are accepted only with their neutral value.

OpenAI-compatible schemas live in :mod:`sgl.server.openai_protocol`.
"""

from __future__ import annotations

from typing import Any, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

STRICT = ConfigDict(extra="forbid", strict=True)


class GenerateReqInput(BaseModel):
    """Body of ``POST /generate``.

    Exactly one of ``text`` and ``input_ids`` is given; a list (of strings, or of
    token-id lists) is a batch and gets a list response. ``sampling_params`` is a
    dict with SGLang's names (``max_new_tokens``, ``temperature``, ``stop``,
    ``regex``, ``json_schema``, ...) or one dict per batch item; the engine
    validates its keys and values.
    """

    model_config = STRICT

    text: Union[str, list[str], None] = None
    input_ids: Union[list[int], list[list[int]], None] = None
    sampling_params: Union[dict[str, Any], list[dict[str, Any]], None] = None
    return_logprob: Union[bool, None] = False
    logprob_start_len: Union[int, None] = None
    top_logprobs_num: Union[int, None] = None
    return_text_in_logprobs: bool = False
    stream: bool = False
    image_data: Union[str, list[Union[str, None]], None] = None
    rid: Union[str, list[str], None] = None
    # Sent by SGLang clients; only the neutral value is supported here.
    lora_path: Union[None, list[None]] = None
    custom_logit_processor: None = None
    return_hidden_states: bool = Field(default=False)
    modalities: Union[list[str], None] = None

    @model_validator(mode="after")
    def _check(self) -> "GenerateReqInput":
        if (self.text is None) == (self.input_ids is None):
            raise ValueError("Exactly one of 'text' and 'input_ids' must be given.")
        if self.return_hidden_states:
            raise ValueError("'return_hidden_states' is not supported by this server.")
        n = self.batch_size
        if n == 0:
            raise ValueError("'text'/'input_ids' must not be an empty list.")
        if self.is_batch and self.stream:
            raise ValueError("'stream' is only supported for a single prompt, not a list.")
        if isinstance(self.sampling_params, list):
            if not self.is_batch or len(self.sampling_params) != n:
                raise ValueError(
                    f"'sampling_params' is a list of {len(self.sampling_params)} dicts but the "
                    f"request has {n if self.is_batch else 'a single'} prompt(s).")
        if isinstance(self.rid, list) and (not self.is_batch or len(self.rid) != n):
            raise ValueError("'rid' as a list must have one id per prompt.")
        if self.top_logprobs_num is not None and self.top_logprobs_num < 0:
            raise ValueError("'top_logprobs_num' must be >= 0.")
        if self.logprob_start_len is not None and self.logprob_start_len < -1:
            raise ValueError("'logprob_start_len' must be >= -1.")
        return self

    @property
    def is_batch(self) -> bool:
        """True when the request carries a list of prompts."""
        if self.text is not None:
            return isinstance(self.text, list)
        return bool(self.input_ids) and isinstance(self.input_ids[0], list)

    @property
    def batch_size(self) -> int:
        """Number of prompts (1 for a single prompt)."""
        if not self.is_batch:
            return 1 if self.text is not None or self.input_ids else 0
        return len(self.text if self.text is not None else self.input_ids)

    def engine_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``Engine.generate`` / ``Engine.async_generate``."""
        return dict(
            prompt=self.text,
            input_ids=self.input_ids,
            sampling_params=self.sampling_params,
            return_logprob=bool(self.return_logprob),
            logprob_start_len=self.logprob_start_len,
            top_logprobs_num=self.top_logprobs_num,
            return_text_in_logprobs=self.return_text_in_logprobs,
            image_data=self.image_data,
        )


class AbortReq(BaseModel):
    """Body of ``POST /abort_request``: one ``rid``, or ``abort_all``."""

    model_config = STRICT

    rid: Union[str, None] = None
    abort_all: bool = False

    @model_validator(mode="after")
    def _check(self) -> "AbortReq":
        if not self.abort_all and not self.rid:
            raise ValueError("Give 'rid' (a request id) or 'abort_all': true.")
        return self


class FlushCacheReq(BaseModel):
    """Optional body of ``POST /flush_cache`` (SGLang's client sends ``empty_cache``)."""

    model_config = STRICT

    empty_cache: bool = True


class TokenizeReq(BaseModel):
    """Body of ``POST /tokenize`` (extension): one text or a list of texts."""

    model_config = STRICT

    text: Union[str, list[str]]
