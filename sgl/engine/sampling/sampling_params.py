"""SamplingParams: per-request decoding options, with SGLang's names and defaults.

The field names match SGLang's ``sampling_params`` JSON object (``/generate``)
so that SGLang programs and clients work unchanged. Ranges follow SGLang's
``SamplingParams.verify`` (and OpenAI's for the penalties).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Union

#: Temperatures below this are treated as greedy (SGLang's ``_SAMPLING_EPS``).
SAMPLING_EPS = 1e-6
#: Largest accepted temperature; anything above is almost surely a unit error.
MAX_TEMPERATURE = 100.0

_INT_FIELDS = ("max_new_tokens", "min_new_tokens", "top_k", "n")
_FLOAT_FIELDS = (
    "temperature", "top_p", "min_p",
    "frequency_penalty", "presence_penalty", "repetition_penalty",
)
_BOOL_FIELDS = ("ignore_eos", "skip_special_tokens", "spaces_between_special_tokens", "no_stop_trim")
_OPT_INT_FIELDS = ("sampling_seed", "stream_interval")
_ALIASES = {"seed": "sampling_seed"}


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@dataclass
class SamplingParams:
    """Decoding options of one request (SGLang field names and defaults).

    Attributes:
        max_new_tokens: most tokens to generate; 0 means prefill only.
        min_new_tokens: EOS, stop_token_ids and stop strings are ignored (and
            EOS/stop tokens masked in the sampler) until this many tokens exist.
        stop: stop string(s); the output text is cut before the first match.
        stop_token_ids: extra token ids that end generation like EOS.
        stop_regex: stop pattern(s) (Python ``re``), matched against the
            output text like stop strings (sent by SGLang's frontend).
        temperature: softmax temperature; 0 means greedy (argmax).
        top_p: nucleus sampling mass in (0, 1]; 1 disables.
        top_k: keep the k most likely tokens; -1 disables, 1 is greedy.
        min_p: drop tokens whose probability is below ``min_p * p_max``.
        frequency_penalty: subtracted ``count(token in output) * value`` from
            the logit (OpenAI definition), in [-2, 2].
        presence_penalty: subtracted ``value`` once a token is in the output
            (OpenAI definition), in [-2, 2].
        repetition_penalty: CTRL/HF multiplicative penalty over prompt and
            output tokens, in (0, 2]; 1 disables.
        ignore_eos: do not stop on the tokenizer's EOS token.
        skip_special_tokens / spaces_between_special_tokens: detokenizer options.
        no_stop_trim: keep the matched stop string / stop token text in the output.
        regex / json_schema: constrained decoding (at most one); a dict schema
            is normalized to a JSON string.
        n: number of samples per prompt.
        sampling_seed: per-request seed (alias ``seed``); makes sampling
            reproducible regardless of batch composition.
        logit_bias: token id -> additive logit bias (OpenAI ``logit_bias``).
        stream_interval: tokens between streamed chunks (None = server default).
    """

    max_new_tokens: int = 128
    min_new_tokens: int = 0
    stop: Optional[Union[str, List[str]]] = None
    stop_token_ids: Optional[List[int]] = None
    stop_regex: Optional[Union[str, List[str]]] = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    no_stop_trim: bool = False
    regex: Optional[str] = None
    json_schema: Optional[Union[str, Dict[str, Any]]] = None
    n: int = 1
    sampling_seed: Optional[int] = None
    logit_bias: Optional[Dict[int, float]] = None
    stream_interval: Optional[int] = None

    # ------------------------------------------------------------------ build
    @classmethod
    def field_names(cls) -> List[str]:
        """All accepted keys of ``from_dict`` (aliases included)."""
        return [f.name for f in dataclasses.fields(cls)] + list(_ALIASES)

    @classmethod
    def from_dict(cls, d: Optional[Dict[str, Any]]) -> "SamplingParams":
        """Build from a JSON-like dict (None or {} gives the defaults).

        Type checks are done here; range checks need the vocabulary size and
        are done by :meth:`verify`. An explicit null means the field's default
        (as SGLang's server treats it). The result is :meth:`normalize`-d.

        Raises:
            ValueError: ``d`` is not a dict, has unknown keys (the message
                lists the allowed ones), both ``seed`` and ``sampling_seed``,
                or a value of the wrong type (the message names the field).
        """
        if d is None:
            return cls().normalize()
        if not isinstance(d, dict):
            raise ValueError(f"sampling_params must be a dict, got {type(d).__name__}")
        allowed = set(cls.field_names())
        unknown = sorted(str(k) for k in d if k not in allowed)
        if unknown:
            raise ValueError(
                f"unknown sampling_params key(s) {unknown}; allowed: {sorted(allowed)}")
        kwargs = dict(d)
        for alias, name in _ALIASES.items():
            if alias in kwargs:
                if kwargs.get(name) is not None and kwargs[alias] is not None:
                    raise ValueError(f"give only one of {alias!r} and {name!r}")
                value = kwargs.pop(alias)
                if kwargs.get(name) is None:
                    kwargs[name] = value
        params = cls(**{k: v for k, v in kwargs.items() if v is not None})
        params._check_types()
        return params.normalize()

    def _check_types(self) -> None:
        for name in _INT_FIELDS:
            if not _is_int(getattr(self, name)):
                raise ValueError(f"{name} must be an int, got {getattr(self, name)!r}")
        for name in _FLOAT_FIELDS:
            if not _is_number(getattr(self, name)):
                raise ValueError(f"{name} must be a number, got {getattr(self, name)!r}")
        for name in _BOOL_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        for name in _OPT_INT_FIELDS:
            v = getattr(self, name)
            if v is not None and not _is_int(v):
                raise ValueError(f"{name} must be an int or null, got {v!r}")
        for name in ("stop", "stop_regex"):
            s = getattr(self, name)
            if s is not None and not isinstance(s, str):
                if not isinstance(s, (list, tuple)) or not all(isinstance(x, str) for x in s):
                    raise ValueError(f"{name} must be a string or a list of strings, got {s!r}")
        ids = self.stop_token_ids
        if ids is not None:
            if not isinstance(ids, (list, tuple, set)) or not all(_is_int(x) for x in ids):
                raise ValueError(f"stop_token_ids must be a list of ints, got {ids!r}")
        if self.regex is not None and not isinstance(self.regex, str):
            raise ValueError(f"regex must be a string, got {type(self.regex).__name__}")
        if self.json_schema is not None and not isinstance(self.json_schema, (str, dict)):
            raise ValueError(
                f"json_schema must be a string or a dict, got {type(self.json_schema).__name__}")
        lb = self.logit_bias
        if lb is not None:
            if not isinstance(lb, dict):
                raise ValueError(f"logit_bias must be a dict token_id -> float, got {lb!r}")
            for k, v in lb.items():
                if not (_is_int(k) or (isinstance(k, str) and k.lstrip("-").isdigit())):
                    raise ValueError(f"logit_bias key must be a token id, got {k!r}")
                if not _is_number(v):
                    raise ValueError(f"logit_bias[{k!r}] must be a number, got {v!r}")

    def normalize(self) -> "SamplingParams":
        """Canonical forms, in place: ``stop`` and ``stop_regex`` -> list[str]
        (``[]`` if None),
        ``stop_token_ids`` -> list[int], ``json_schema`` dict -> JSON string,
        ``logit_bias`` keys -> int. Returns ``self``."""
        self.stop = self.stop_strs
        self.stop_regex = self.stop_regex_strs
        if self.stop_token_ids is not None:
            self.stop_token_ids = list(self.stop_token_ids)
        if isinstance(self.json_schema, dict):
            self.json_schema = json.dumps(self.json_schema)
        if self.logit_bias is not None:
            self.logit_bias = {int(k): float(v) for k, v in self.logit_bias.items()}
        return self

    # ----------------------------------------------------------------- verify
    def verify(self, vocab_size: int) -> None:
        """Range checks (SGLang's, plus NaN/inf and vocabulary bounds).

        Raises:
            ValueError: naming the offending field.
        """
        self._check_types()
        if self.sampling_seed is not None and not 0 <= self.sampling_seed < 2**63:
            raise ValueError(f"sampling_seed must be in [0, 2**63), got {self.sampling_seed}")
        for name in _FLOAT_FIELDS:
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)!r}")
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(
                f"min_new_tokens must be in [0, max_new_tokens={self.max_new_tokens}], "
                f"got {self.min_new_tokens}")
        if not 0.0 <= self.temperature <= MAX_TEMPERATURE:
            raise ValueError(f"temperature must be in [0, {MAX_TEMPERATURE}], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k == 0 or self.top_k < -1:
            raise ValueError(f"top_k must be -1 (disabled) or >= 1, got {self.top_k}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        for name in ("frequency_penalty", "presence_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise ValueError(f"{name} must be in [-2, 2], got {getattr(self, name)}")
        if not 0.0 < self.repetition_penalty <= 2.0:
            raise ValueError(f"repetition_penalty must be in (0, 2], got {self.repetition_penalty}")
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        if any(s == "" for s in stops):
            raise ValueError("stop strings must be non-empty")
        for pattern in self.stop_regex_strs:
            if pattern == "":
                raise ValueError("stop_regex patterns must be non-empty")
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"stop_regex {pattern!r} is not a valid regex: {e}") from None
        for t in self.stop_token_ids or []:
            if not 0 <= t < vocab_size:
                raise ValueError(f"stop_token_ids entry {t} is outside the vocabulary [0, {vocab_size})")
        if self.regex is not None and self.json_schema is not None:
            raise ValueError("give at most one of regex and json_schema")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.stream_interval is not None and self.stream_interval < 1:
            raise ValueError(f"stream_interval must be >= 1, got {self.stream_interval}")
        for k, v in (self.logit_bias or {}).items():
            tok = int(k)
            if not 0 <= tok < vocab_size:
                raise ValueError(f"logit_bias key {tok} is outside the vocabulary [0, {vocab_size})")
            if not math.isfinite(v):
                raise ValueError(f"logit_bias[{tok}] must be finite, got {v!r}")

    # ---------------------------------------------------------------- derived
    @property
    def is_greedy(self) -> bool:
        """True when decoding is argmax: temperature ~ 0 or top_k == 1."""
        return self.temperature < SAMPLING_EPS or self.top_k == 1

    @property
    def stop_strs(self) -> List[str]:
        """The stop strings as a list (whether or not normalized)."""
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def stop_regex_strs(self) -> List[str]:
        """The stop regexes as a list (whether or not normalized)."""
        if self.stop_regex is None:
            return []
        return [self.stop_regex] if isinstance(self.stop_regex, str) else list(self.stop_regex)

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-serializable dict that :meth:`from_dict` accepts back."""
        return dataclasses.asdict(self)
