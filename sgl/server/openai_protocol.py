"""Request schemas of the OpenAI-compatible routes (``/v1/completions``, ``/v1/chat/completions``).

Field names and ranges follow the OpenAI API reference
(https://platform.openai.com/docs/api-reference/chat/create). Extensions in the
spirit of SGLang/vLLM: ``top_k``, ``min_p``, ``min_tokens``,
``repetition_penalty``, ``regex``, ``stop_token_ids``, ``ignore_eos``,
``skip_special_tokens``, ``no_stop_trim``. Unknown fields and wrong types are
rejected (HTTP 400). Responses are built as plain dicts in the route modules.
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

STRICT = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


class StreamOptions(BaseModel):
    """``stream_options``: ``include_usage`` adds a final chunk with usage and no choices."""

    model_config = STRICT
    include_usage: bool = False
    continuous_usage_stats: bool = False


class JsonSchemaFormat(BaseModel):
    """``response_format.json_schema``: a named JSON Schema the output must satisfy."""

    model_config = STRICT
    name: str = "response"
    description: Union[str, None] = None
    schema_: Union[dict[str, Any], None] = Field(default=None, alias="schema")
    strict: Union[bool, None] = None


class ResponseFormat(BaseModel):
    """``response_format``: ``text``, ``json_object`` or ``json_schema``."""

    model_config = STRICT
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Union[JsonSchemaFormat, None] = None

    @model_validator(mode="after")
    def _check(self) -> "ResponseFormat":
        if self.type == "json_schema" and (self.json_schema is None or self.json_schema.schema_ is None):
            raise ValueError("response_format of type 'json_schema' needs json_schema.schema.")
        return self


class SamplingFields(BaseModel):
    """Sampling fields shared by completions and chat completions."""

    model_config = STRICT

    model: str = "default"
    n: int = Field(default=1, ge=1, le=64)
    temperature: Union[float, None] = Field(default=None, ge=0.0, le=2.0)
    top_p: Union[float, None] = Field(default=None, gt=0.0, le=1.0)
    stop: Union[str, list[str], None] = None
    seed: Union[int, None] = None
    presence_penalty: Union[float, None] = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: Union[float, None] = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: Union[dict[str, float], None] = None
    stream: bool = False
    stream_options: Union[StreamOptions, None] = None
    user: Union[str, None] = None
    response_format: Union[ResponseFormat, None] = None
    # Extensions (SGLang / vLLM names).
    top_k: Union[int, None] = None
    min_p: Union[float, None] = Field(default=None, ge=0.0, le=1.0)
    min_tokens: Union[int, None] = Field(default=None, ge=0)
    repetition_penalty: Union[float, None] = Field(default=None, gt=0.0)
    regex: Union[str, None] = None
    stop_token_ids: Union[list[int], None] = None
    ignore_eos: Union[bool, None] = None
    skip_special_tokens: Union[bool, None] = None
    no_stop_trim: Union[bool, None] = None
    rid: Union[str, None] = None

    @model_validator(mode="after")
    def _check_common(self) -> "SamplingFields":
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        for i, s in enumerate(stops):
            if s == "":
                raise ValueError(f"'stop[{i}]' is an empty string; stop strings must be non-empty.")
        if self.stream_options is not None and not self.stream:
            raise ValueError("'stream_options' is only allowed when 'stream' is true.")
        if self.regex is not None and self.response_format is not None and self.response_format.type != "text":
            raise ValueError("Give at most one of 'regex' and a JSON 'response_format'.")
        if self.logit_bias:
            for key, bias in self.logit_bias.items():
                if not key.lstrip("-").isdigit():
                    raise ValueError(f"'logit_bias' keys must be token ids, got {key!r}.")
                if not -100.0 <= bias <= 100.0:
                    raise ValueError(f"'logit_bias[{key}]' must be in [-100, 100].")
        return self

    @property
    def stop_list(self) -> list[str]:
        """``stop`` as a list of strings."""
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionRequest(SamplingFields):
    """Body of ``POST /v1/completions``.

    ``prompt`` is a string, a list of strings, a list of token ids, or a list of
    token-id lists. ``logprobs`` (0..20) asks for that many top alternatives per
    position (OpenAI's legacy completions format). ``echo`` prepends the prompt.
    """

    prompt: Union[str, list[str], list[int], list[list[int]]]
    max_tokens: Union[int, None] = Field(default=16, ge=0)
    logprobs: Union[int, None] = Field(default=None, ge=0, le=20)
    echo: bool = False
    best_of: Union[int, None] = None
    suffix: Union[str, None] = None

    @model_validator(mode="after")
    def _check(self) -> "CompletionRequest":
        if isinstance(self.prompt, list) and len(self.prompt) == 0:
            raise ValueError("'prompt' must not be an empty list.")
        if self.best_of not in (None, 1) and self.best_of != self.n:
            raise ValueError("'best_of' other than n is not supported.")
        if self.suffix:
            raise ValueError("'suffix' is not supported.")
        if self.echo and self.stream:
            raise ValueError("'echo' is not supported together with 'stream'.")
        return self


class ImageURL(BaseModel):
    model_config = STRICT
    url: str
    detail: Union[Literal["auto", "low", "high"], None] = None


class ContentPart(BaseModel):
    """One part of a multi-part message content: text or an image URL / data URI."""

    model_config = STRICT
    type: Literal["text", "image_url"]
    text: Union[str, None] = None
    image_url: Union[ImageURL, None] = None

    @model_validator(mode="after")
    def _check(self) -> "ContentPart":
        if self.type == "text" and self.text is None:
            raise ValueError("a content part of type 'text' needs 'text'.")
        if self.type == "image_url" and self.image_url is None:
            raise ValueError("a content part of type 'image_url' needs 'image_url'.")
        return self


class ChatMessage(BaseModel):
    """One chat message. ``developer`` is treated as ``system``."""

    model_config = STRICT
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[ContentPart], None] = None
    name: Union[str, None] = None
    tool_call_id: Union[str, None] = None


class ChatCompletionRequest(SamplingFields):
    """Body of ``POST /v1/chat/completions``.

    ``logprobs`` is a bool and ``top_logprobs`` (0..20) the number of
    alternatives per position. ``max_completion_tokens`` takes precedence over
    the older ``max_tokens``. Tools are not supported (400 when given).
    ``continue_final_message`` (extension) continues a trailing assistant message
    instead of opening a new turn.
    """

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Union[int, None] = Field(default=None, ge=1)
    max_completion_tokens: Union[int, None] = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: Union[int, None] = Field(default=None, ge=0, le=20)
    tools: Union[list[dict[str, Any]], None] = None
    tool_choice: Union[str, dict[str, Any], None] = None
    parallel_tool_calls: Union[bool, None] = None
    continue_final_message: bool = False
    chat_template_kwargs: Union[dict[str, Any], None] = None

    @model_validator(mode="after")
    def _check(self) -> "ChatCompletionRequest":
        if self.tools:
            raise ValueError("'tools' (function calling) is not supported by this server.")
        if self.tool_choice not in (None, "none", "auto"):
            raise ValueError("'tool_choice' is not supported by this server.")
        if self.top_logprobs and not self.logprobs:
            raise ValueError("'top_logprobs' requires 'logprobs': true.")
        if self.continue_final_message and self.messages[-1].role != "assistant":
            raise ValueError("'continue_final_message' needs the last message to be an assistant message.")
        return self

    @property
    def max_new_tokens(self) -> Union[int, None]:
        """The token budget: ``max_completion_tokens`` or else ``max_tokens`` (None = engine default)."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
