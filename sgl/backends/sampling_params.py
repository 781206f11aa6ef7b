"""SglSamplingParams: the sampling parameters of one ``gen()`` call, in SGLang's names.

Shared by the frontend language (``sgl.lang``), which builds and merges them, and the
backends, which turn them into request fields (``/generate``, the OpenAI API, ``sgl.Engine``).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Union

# Field names of SglSamplingParams that a gen() call may override.
SAMPLING_FIELDS = (
    "max_new_tokens",
    "min_new_tokens",
    "stop",
    "stop_token_ids",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "frequency_penalty",
    "presence_penalty",
    "ignore_eos",
    "return_logprob",
    "logprob_start_len",
    "top_logprobs_num",
    "return_text_in_logprobs",
    "dtype",
    "regex",
    "json_schema",
)

# The subset that the engine's /generate takes as top-level request fields
# rather than inside ``sampling_params``.
LOGPROB_FIELDS = ("return_logprob", "logprob_start_len", "top_logprobs_num", "return_text_in_logprobs")


@dataclasses.dataclass
class SglSamplingParams:
    """Sampling parameters of one gen() call, in SGLang's names.

    ``None`` means "not set here": a gen() node carries only its overrides and
    the interpreter merges them over the program's defaults (the keyword
    arguments of ``.run()``).  Units: token counts for ``max_new_tokens`` /
    ``min_new_tokens``; ``temperature`` 0 means greedy.

    ``dtype`` (``int``, ``float``, ``bool``, ``str`` or their names) is turned
    into a ``regex`` by :meth:`resolve_dtype` before the request is sent.
    """

    max_new_tokens: Optional[int] = 128
    min_new_tokens: Optional[int] = None
    stop: Optional[Union[str, List[str]]] = None
    stop_token_ids: Optional[List[int]] = None
    temperature: Optional[float] = 1.0
    top_p: Optional[float] = 1.0
    top_k: Optional[int] = -1
    min_p: Optional[float] = 0.0
    frequency_penalty: Optional[float] = 0.0
    presence_penalty: Optional[float] = 0.0
    ignore_eos: Optional[bool] = False
    return_logprob: Optional[bool] = None
    logprob_start_len: Optional[int] = None
    top_logprobs_num: Optional[int] = None
    return_text_in_logprobs: Optional[bool] = None
    dtype: Any = None
    regex: Optional[str] = None
    json_schema: Optional[str] = None

    @classmethod
    def overrides(cls, **kwargs) -> "SglSamplingParams":
        """A params object with every field ``None`` except those given."""
        unknown = set(kwargs) - set(SAMPLING_FIELDS)
        if unknown:
            raise ValueError(f"unknown sampling parameter(s): {sorted(unknown)}")
        params = cls(**{f: None for f in SAMPLING_FIELDS})
        for k, v in kwargs.items():
            setattr(params, k, v)
        return params

    def clone(self) -> "SglSamplingParams":
        return copy.deepcopy(self)

    def merged(self, overrides: "SglSamplingParams", extra_stop: Sequence[str] = ()) -> "SglSamplingParams":
        """``self`` (defaults) with every non-None field of ``overrides`` applied,
        plus ``extra_stop`` (the chat template's stop strings) appended to ``stop``."""
        out = self.clone()
        for f in SAMPLING_FIELDS:
            v = getattr(overrides, f)
            if v is not None:
                setattr(out, f, copy.deepcopy(v))
        if extra_stop:
            stop = [] if out.stop is None else ([out.stop] if isinstance(out.stop, str) else list(out.stop))
            out.stop = stop + [s for s in extra_stop if s not in stop]
        return out

    def resolve_dtype(self) -> "SglSamplingParams":
        """Map ``dtype`` to a regex (and stop strings for numbers), like SGLang.

        Returns a copy with ``regex`` set and ``dtype`` cleared.  The regexes
        come from :mod:`sgl.grammar.dtypes` (imported lazily).

        Raises:
            ValueError: ``dtype`` is not one of int/float/bool/str.
            ImportError: the grammar package has no ``dtypes`` module yet.
        """
        if self.dtype is None:
            return self
        from sgl.grammar import dtypes  # lazy: the grammar layer is optional for plain gen

        out = self.clone()
        stop = [] if out.stop is None else ([out.stop] if isinstance(out.stop, str) else list(out.stop))
        d = out.dtype
        if d in (int, "int"):
            out.regex, stop = dtypes.REGEX_INT, stop + [" ", "\n"]
        elif d in (float, "float"):
            out.regex, stop = dtypes.REGEX_FLOAT, stop + [" ", "\n"]
        elif d in (bool, "bool"):
            out.regex = dtypes.REGEX_BOOL
        elif d in (str, "str"):
            out.regex = dtypes.REGEX_STR
        else:
            raise ValueError(f"dtype must be one of int, float, bool, str; got {d!r}")
        out.stop = stop or None
        out.dtype = None
        return out

    def to_srt_kwargs(self) -> Dict[str, Any]:
        """The engine's ``sampling_params`` dict (SGLang /generate names).

        Only fields that are set are included; logprob fields are excluded
        (they are top-level request fields, see :meth:`logprob_kwargs`).
        """
        if self.dtype is not None:
            raise ValueError("dtype must be resolved with resolve_dtype() before to_srt_kwargs()")
        out: Dict[str, Any] = {}
        for f in SAMPLING_FIELDS:
            if f in LOGPROB_FIELDS or f == "dtype":
                continue
            v = getattr(self, f)
            if v is None:
                continue
            if f in ("stop", "stop_token_ids") and not v:
                continue
            out[f] = list(v) if isinstance(v, tuple) else v
        return out

    def logprob_kwargs(self) -> Dict[str, Any]:
        """The set logprob request fields (return_logprob, logprob_start_len, ...)."""
        return {f: getattr(self, f) for f in LOGPROB_FIELDS if getattr(self, f) is not None}

    def to_openai_kwargs(self) -> Dict[str, Any]:
        """OpenAI completion/chat kwargs (fields OpenAI has no equivalent for are dropped)."""
        stop = self.stop
        return {
            "max_tokens": self.max_new_tokens,
            "stop": (stop if isinstance(stop, str) else list(stop or ())) or None,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty,
        }
