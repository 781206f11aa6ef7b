"""The local backend: programs call an in-process ``sgl.Engine``.

This is the default backend when none is set: the engine is created lazily,
on the first model call, with the default config (the bundled model).  Many
program threads call it at once; the engine's scheduler batches their
requests and its radix cache shares their common prefixes.

``select`` scoring (one prefill per choice over the shared, cached prefix):

1. Tokenize the prompt (``P``) and each ``prompt + choice`` (``C_i``) with the
   engine's tokenizer.  Tokenization may merge across the boundary (a
   trailing space joins the choice's first word), so the choice's tokens are
   taken to start at ``k_i = LCP(P, C_i)`` rather than at ``len(P)``.
2. Commit ``P[:min k_i]`` once (a ``max_new_tokens=0`` request) so every
   choice request reuses it from the prefix cache.
3. Prefill each ``C_i`` with ``max_new_tokens=0``, ``return_logprob`` and
   ``logprob_start_len=k_i``: the engine returns
   ``logP(C_i[j] | C_i[:j])`` for ``j >= k_i``, i.e. exactly the choice tokens.
4. ``normalized_prompt_logprobs[i]`` = mean of those logprobs; for
   ``unconditional_likelihood_normalized`` the choice tokens are also scored
   alone (``input_ids = C_i[k_i:]``).  The choices method decides.
"""

from __future__ import annotations

import threading
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

from sgl.backends.base import Backend, Prompt, prepare_sampling_params
from sgl.backends.chat_template import ChatTemplate, resolve_chat_template
from sgl.backends.scoring import score_by_start, select_by_prompt_logprobs
from sgl.backends.choices import ChoicesDecision, ChoicesSamplingMethod
from sgl.backends.hf_chat_template import chat_template_from_tokenizer
from sgl.backends.sampling_params import SglSamplingParams


def _create_engine(**overrides):
    from sgl.engine.engine import Engine

    return Engine(**overrides)


class EngineBackend(Backend):
    """Frontend backend over an in-process engine.

    Args:
        engine: an existing ``sgl.Engine``; when None one is created lazily
            with ``engine_overrides`` (default config = bundled model) and
            shut down by :meth:`shutdown`.
        chat_template: a template name (``"chatml"``, ``"llama-3"``...), a
            :class:`ChatTemplate`, or None for the model's own template
            (derived from its tokenizer).
        **engine_overrides: config overrides for a lazily created engine.
    """

    def __init__(self, engine=None, chat_template: Union[str, ChatTemplate, None] = None, **engine_overrides):
        super().__init__(chat_template=None)
        self._engine = engine
        self._owns_engine = engine is None
        self._engine_overrides = engine_overrides
        self._template_arg = chat_template
        self._template: Optional[ChatTemplate] = None
        self._lock = threading.Lock()
        self._stats = {"requests": 0, "prompt_tokens": 0, "cached_tokens": 0, "completion_tokens": 0}

    # -- engine / template ------------------------------------------------------------
    @property
    def engine(self):
        """The engine, created on first access when none was given."""
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    self._engine = _create_engine(**self._engine_overrides)
        return self._engine

    def get_chat_template(self) -> ChatTemplate:
        if self._template is None:
            self._template = resolve_chat_template(
                self._template_arg,
                lambda: chat_template_from_tokenizer(self.engine.tokenizer, str(self.engine.model_path)))
        return self._template

    @property
    def supports_images(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.engine, "is_multimodal", False))

    def get_model_name(self) -> str:
        return str(self.engine.model_path)

    # -- stats --------------------------------------------------------------------------
    def _record(self, outs: Union[dict, List[dict]]) -> None:
        outs = outs if isinstance(outs, list) else [outs]
        with self._lock:
            for o in outs:
                m = o.get("meta_info", {})
                self._stats["requests"] += 1
                self._stats["prompt_tokens"] += int(m.get("prompt_tokens", 0))
                self._stats["cached_tokens"] += int(m.get("cached_tokens", 0))
                self._stats["completion_tokens"] += int(m.get("completion_tokens", 0))

    def stats(self) -> Dict[str, Any]:
        """Totals over every request this backend sent: ``requests``,
        ``prompt_tokens``, ``cached_tokens``, ``completion_tokens`` and
        ``cache_hit_rate`` (cached / prompt tokens, 0 when no prompt tokens)."""
        with self._lock:
            s = dict(self._stats)
        s["cache_hit_rate"] = s["cached_tokens"] / s["prompt_tokens"] if s["prompt_tokens"] else 0.0
        return s

    def reset_stats(self) -> None:
        with self._lock:
            for k in self._stats:
                self._stats[k] = 0

    # -- generation ---------------------------------------------------------------------
    def _request(self, prompt: Prompt, params: SglSamplingParams) -> Dict[str, Any]:
        p = prepare_sampling_params(params)
        req: Dict[str, Any] = {"prompt": prompt.text, "sampling_params": p.to_srt_kwargs(), **p.logprob_kwargs()}
        if prompt.images:
            req["image_data"] = [b64 for _, b64 in prompt.images]
        return req

    def generate(self, prompt: Prompt, sampling_params: SglSamplingParams) -> Tuple[str, Dict[str, Any]]:
        out = self.engine.generate(**self._request(prompt, sampling_params))
        self._record(out)
        return out["text"], out["meta_info"]

    def generate_stream(self, prompt: Prompt, sampling_params: SglSamplingParams) -> Iterator[Tuple[str, Dict[str, Any]]]:
        pos, last = 0, None
        for chunk in self.engine.generate(**self._request(prompt, sampling_params), stream=True):
            text = chunk["text"]
            last = chunk
            yield text[pos:], chunk["meta_info"]
            pos = len(text)
        if last is not None:
            self._record(last)

    def cache_prefix(self, prefix_text: str) -> None:
        """Prefill ``prefix_text`` (``max_new_tokens=0``) so later requests hit the radix cache."""
        if prefix_text:
            self._record(self.engine.generate(prompt=prefix_text, sampling_params={"max_new_tokens": 0}))

    # -- select -------------------------------------------------------------------------
    def _score(self, input_ids: List[List[int]], starts: List[int]) -> List[dict]:
        """Prefill each sequence with max_new_tokens=0, logprobs from its start (grouped by start)."""
        def prefill(ids: List[List[int]], start: int) -> List[dict]:
            params = [{"max_new_tokens": 0, "temperature": 0.0} for _ in ids]
            res = self.engine.generate(input_ids=ids, sampling_params=params, return_logprob=True,
                                       logprob_start_len=start, return_text_in_logprobs=True)
            self._record(res)
            return res
        return score_by_start(prefill, input_ids, starts)

    def select(self, prompt: Prompt, choices: List[str], temperature: float,
               choices_method: ChoicesSamplingMethod) -> ChoicesDecision:
        """Score every choice (see module docstring) and let ``choices_method`` pick.

        Raises:
            ValueError: ``temperature > 0`` (selection is an argmax) or a
                choice that adds no tokens.
        """
        if temperature > 1e-5:
            raise ValueError(f"select(temperature={temperature}): only greedy selection (temperature=0) is supported")
        tok = self.engine.tokenizer
        prefix_ids = tok.encode(prompt.text) if prompt.text else []
        full_ids = [tok.encode(prompt.text + c) for c in choices]
        return select_by_prompt_logprobs(
            prefix_ids, full_ids, choices, choices_method,
            lambda ids: self._record(self.engine.generate(input_ids=ids, sampling_params={"max_new_tokens": 0})),
            self._score)

    # -- admin --------------------------------------------------------------------------
    def flush_cache(self) -> bool:
        return bool(self.engine.flush_cache())

    def get_server_info(self) -> Dict[str, Any]:
        return self.engine.get_server_info()

    def shutdown(self) -> None:
        """Shut down the engine if this backend created it."""
        if self._owns_engine and self._engine is not None:
            self._engine.shutdown()
            self._engine = None
