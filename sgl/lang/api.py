"""Public factories of the frontend language (thin: each builds one IR node).

Names and signatures follow SGLang's ``python/sglang/lang/api.py`` so that
SGLang programs run unchanged.
"""

from __future__ import annotations

import re
from typing import Callable, List, Optional, Union

from sgl.backends.choices import ChoicesSamplingMethod, get_choices_method
from sgl.lang.function import SglFunction
from sgl.lang.global_config import get_default_backend, set_default_backend  # noqa: F401 (re-export)
from sgl.lang.ir import (
    SglExpr,
    SglExprList,
    SglGen,
    SglImage,
    SglRoleBegin,
    SglRoleEnd,
    SglSamplingParams,
    SglSelect,
    _as_expr,
)


def function(func: Optional[Callable] = None, **_ignored):
    """Decorator: ``@function`` or ``@function()`` makes a program from ``func(s, ...)``."""
    if func is not None:
        return SglFunction(func)
    return SglFunction


def gen(
    name: Optional[str] = None,
    max_tokens: Optional[int] = None,
    min_tokens: Optional[int] = None,
    stop: Optional[Union[str, List[str]]] = None,
    stop_token_ids: Optional[List[int]] = None,
    temperature: Optional[float] = None,
    top_p: Optional[float] = None,
    top_k: Optional[int] = None,
    min_p: Optional[float] = None,
    frequency_penalty: Optional[float] = None,
    presence_penalty: Optional[float] = None,
    ignore_eos: Optional[bool] = None,
    return_logprob: Optional[bool] = None,
    logprob_start_len: Optional[int] = None,
    top_logprobs_num: Optional[int] = None,
    return_text_in_logprobs: Optional[bool] = None,
    dtype: Optional[Union[type, str]] = None,
    choices: Optional[List[str]] = None,
    choices_method: Optional[Union[ChoicesSamplingMethod, str]] = None,
    regex: Optional[str] = None,
    json_schema: Optional[str] = None,
) -> SglExpr:
    """Generate into variable ``name``.  Unset arguments take the ``.run()`` defaults.

    With ``choices`` this is :func:`select` (``temperature`` defaults to 0).

    Raises:
        ValueError: an invalid ``regex`` (names the field) or a non-str ``json_schema``.
    """
    if choices:
        return SglSelect(name, choices, 0.0 if temperature is None else temperature, get_choices_method(choices_method))
    if regex is not None:
        try:
            re.compile(regex)
        except re.error as e:
            raise ValueError(f"gen(regex=...): invalid regular expression: {e}") from e
    if json_schema is not None and not isinstance(json_schema, str):
        import json

        json_schema = json.dumps(json_schema)  # accept a dict, as the engine takes a JSON string
    params = SglSamplingParams.overrides(
        max_new_tokens=max_tokens, min_new_tokens=min_tokens, stop=stop, stop_token_ids=stop_token_ids,
        temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p, frequency_penalty=frequency_penalty,
        presence_penalty=presence_penalty, ignore_eos=ignore_eos, return_logprob=return_logprob,
        logprob_start_len=logprob_start_len, top_logprobs_num=top_logprobs_num,
        return_text_in_logprobs=return_text_in_logprobs, dtype=dtype, regex=regex, json_schema=json_schema)
    return SglGen(name, params)


def gen_int(name: Optional[str] = None, **kwargs) -> SglExpr:
    """``gen(name, dtype=int, ...)``: an integer (regex-constrained)."""
    return gen(name, dtype=int, **kwargs)


def gen_string(name: Optional[str] = None, **kwargs) -> SglExpr:
    """``gen(name, dtype=str, ...)``: a double-quoted string (regex-constrained)."""
    return gen(name, dtype=str, **kwargs)


def select(
    name: Optional[str] = None,
    choices: Optional[List[str]] = None,
    temperature: float = 0.0,
    choices_method: Union[ChoicesSamplingMethod, str, None] = None,
) -> SglExpr:
    """Append the choice the model scores highest and store it in ``name``.

    ``choices_method``: ``token_length_normalized`` (default),
    ``greedy_token_selection`` or ``unconditional_likelihood_normalized``
    (objects from :mod:`sgl.backends.choices` or their names).

    Raises:
        ValueError: ``choices`` missing/empty or an unknown method.
    """
    if not choices:
        raise ValueError("select() needs a non-empty list of choices")
    return SglSelect(name, choices, temperature, get_choices_method(choices_method))


def image(source) -> SglExpr:
    """An image for multimodal models: a path, URL, base64 data, bytes or PIL image."""
    return SglImage(source)


def _role_common(name: str, expr=None) -> SglExprList:
    inner = [] if expr is None else [_as_expr(expr)]
    return SglExprList([SglRoleBegin(name), *inner, SglRoleEnd(name)])


def system(expr=None) -> SglExprList:
    """A system message wrapping ``expr`` (text or expressions)."""
    return _role_common("system", expr)


def user(expr=None) -> SglExprList:
    """A user message wrapping ``expr``."""
    return _role_common("user", expr)


def assistant(expr=None) -> SglExprList:
    """An assistant message wrapping ``expr`` (typically containing a gen)."""
    return _role_common("assistant", expr)


def system_begin() -> SglRoleBegin:
    return SglRoleBegin("system")


def system_end() -> SglRoleEnd:
    return SglRoleEnd("system")


def user_begin() -> SglRoleBegin:
    return SglRoleBegin("user")


def user_end() -> SglRoleEnd:
    return SglRoleEnd("user")


def assistant_begin() -> SglRoleBegin:
    return SglRoleBegin("assistant")


def assistant_end() -> SglRoleEnd:
    return SglRoleEnd("assistant")


def flush_cache(backend=None) -> bool:
    """Drop the backend's cached prefixes (the default backend when None)."""
    from sgl.lang.global_config import resolve_backend

    return resolve_backend(backend).flush_cache()


def get_server_info(backend=None) -> dict:
    """The backend's server/engine info (the default backend when None)."""
    from sgl.lang.global_config import resolve_backend

    return resolve_backend(backend).get_server_info()
