"""Turning ``Engine.generate`` arguments into validated Reqs (in the caller's thread).

Every check happens here, before anything is queued, so bad input raises a
ValueError naming the field and never reaches the scheduler.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any, List, Sequence, Tuple

import torch

from sgl.engine.req import LogprobRequest, Req
from sgl.engine.sampling.sampling_params import SamplingParams


def _per_item(value, n: int, name: str) -> list:
    """Broadcast a scalar argument to ``n`` prompts, or check a list's length."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} entries but there are {n} prompts")
        return list(value)
    return [value] * n


class RequestBuilder:
    """Validates inputs and builds Reqs for an Engine."""

    def __init__(self, engine):
        self.engine = engine
        self._tok_lock = threading.Lock()
        self._grammar_backend = None
        self._grammar_lock = threading.Lock()

    # ------------------------------------------------------------ helpers used by the scheduler
    def new_detokenizer(self, r: Req):
        from sgl.engine.detokenizer import IncrementalDetokenizer
        p = r.sampling_params
        return IncrementalDetokenizer(self.engine.tokenizer, skip_special_tokens=p.skip_special_tokens,
                                      spaces_between_special_tokens=p.spaces_between_special_tokens,
                                      prompt_ids=r.input_ids)

    @property
    def grammar_backend(self):
        with self._grammar_lock:
            if self._grammar_backend is None:
                from sgl.grammar import make_grammar_backend

                e = self.engine
                # built on the scheduler thread, like all of the engine's torch work (see Engine.__init__)
                self._grammar_backend = e.scheduler.call(lambda _: make_grammar_backend(
                    e.config.grammar.backend, e.tokenizer, e.vocab_size, eos_token_ids=e.eos_token_ids,
                    **self._backend_options())).result()
            return self._grammar_backend

    def _backend_options(self) -> dict:
        # The engine tokenizes forced runs canonically (sgl/engine/jump_forward.py), so greedy output is the
        # same with jump-forward on or off without holding back the last forced token.
        return {"jump_holdback": False} if self.engine.config.grammar.backend == "builtin" else {}

    def tokenize(self, text: str) -> List[int]:
        with self._tok_lock:
            return list(self.engine.tokenizer(text)["input_ids"])

    # ------------------------------------------------------------ build
    def build(self, prompt, input_ids, sampling_params, return_logprob, logprob_start_len, top_logprobs_num,
              return_text_in_logprobs, stream, rid, image_data) -> Tuple[List[Req], bool]:
        """Returns (reqs, single). A prompt with ``n > 1`` expands into n Reqs (single becomes False).

        Raises:
            ValueError: naming the offending field.
        """
        if image_data is not None:
            raise ValueError(f"image_data was given but the model ({self.engine.model_path}) is text-only")
        if (prompt is None) == (input_ids is None):
            raise ValueError("give exactly one of 'text'/'prompt' or 'input_ids'")
        if prompt is not None:
            single = isinstance(prompt, str)
            if not single and not isinstance(prompt, (list, tuple)):
                raise ValueError(f"prompt must be a string or a list of strings, got {type(prompt).__name__}")
            prompts = [prompt] if single else list(prompt)
            for p in prompts:
                _check_text(p)
            token_lists = [self.tokenize(p) for p in prompts]
        else:
            if hasattr(input_ids, "tolist"):  # a tensor or array of token ids
                input_ids = input_ids.tolist()
            if not isinstance(input_ids, (list, tuple)):
                raise ValueError(f"input_ids must be a list of ints or a list of lists, got {type(input_ids).__name__}")
            nested = [isinstance(x, (list, tuple)) for x in input_ids]
            if any(nested) and not all(nested):
                raise ValueError("input_ids mixes token ids and lists of token ids")
            single = not any(nested)
            token_lists = [list(input_ids)] if single else [list(x) for x in input_ids]
        if not token_lists:
            raise ValueError("no prompts given")
        n = len(token_lists)
        params = _per_item(sampling_params, n, "sampling_params") if isinstance(sampling_params, list) \
            else [sampling_params] * n
        lps = _per_item(return_logprob, n, "return_logprob")
        starts = _per_item(logprob_start_len, n, "logprob_start_len")
        tops = _per_item(top_logprobs_num, n, "top_logprobs_num")
        rids = _per_item(rid, n, "rid") if rid is not None else [None] * n
        reqs: List[Req] = []
        for i, ids in enumerate(token_lists):
            sp = self._params(params[i])
            self._check_ids(ids)
            lp = self._logprob(lps[i], starts[i], tops[i], return_text_in_logprobs, len(ids))
            base = str(rids[i]) if rids[i] is not None else uuid.uuid4().hex
            for k in range(sp.n):
                r = Req(rid=base if sp.n == 1 else f"{base}-{k}", input_ids=list(ids),
                        sampling_params=sp, logprob=lp, stream=bool(stream))
                self._attach(r, k)
                reqs.append(r)
            if sp.n > 1:
                single = False
        if stream and len(reqs) != 1:
            raise ValueError("stream=True takes a single prompt with n=1")
        return reqs, single

    def _params(self, d) -> SamplingParams:
        if isinstance(d, SamplingParams):
            sp = d
        elif d is None or isinstance(d, dict):
            sp = SamplingParams.from_dict(d)
        else:
            raise ValueError(f"sampling_params must be a dict, got {type(d).__name__}")
        sp.verify(self.engine.vocab_size)
        return sp.normalize()

    def _check_ids(self, ids: Sequence[Any]) -> None:
        e = self.engine
        if not ids:
            raise ValueError("input_ids is empty")
        for t in ids:
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < e.vocab_size:
                raise ValueError(f"input_ids must be ints in [0, {e.vocab_size}), got {t!r}")
        if len(ids) >= e.context_len:
            raise ValueError(f"the input ({len(ids)} tokens) is longer than the model's context length "
                             f"({e.context_len} tokens)")
        if len(ids) + 1 > e.runner.token_to_kv_pool.size:
            raise ValueError(f"the input ({len(ids)} tokens) does not fit the KV pool "
                             f"({e.runner.token_to_kv_pool.size} tokens)")

    def _logprob(self, enabled, start, top, return_text, prompt_len: int) -> LogprobRequest:
        if not enabled:
            return LogprobRequest()
        if start is not None and (isinstance(start, bool) or not isinstance(start, int)):
            raise ValueError(f"logprob_start_len must be an int, got {start!r}")
        if start is not None and start < 0:
            start = None  # SGLang's -1: no prompt logprobs
        if start is not None and start >= prompt_len:
            raise ValueError(f"logprob_start_len ({start}) must be smaller than the prompt length ({prompt_len})")
        top = top or 0
        if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= self.engine.vocab_size:
            raise ValueError(f"top_logprobs_num must be an int in [0, {self.engine.vocab_size}], got {top!r}")
        return LogprobRequest(True, start, top, bool(return_text))

    def _attach(self, r: Req, k: int) -> None:
        from sgl.engine.stop import StopChecker
        e, p = self.engine, r.sampling_params
        room = e.context_len - len(r.input_ids)
        if p.max_new_tokens > room:  # clip to the context window, as SGLang does
            p = r.sampling_params = _replace(p, max_new_tokens=room, min_new_tokens=min(p.min_new_tokens, room))
        if p.sampling_seed is not None:
            r.generator = torch.Generator().manual_seed(int(p.sampling_seed) + k)
        if p.regex is not None or p.json_schema is not None:
            r.grammar = self.grammar_backend.compile(regex=p.regex, json_schema=p.json_schema)
        r.detokenizer = self.new_detokenizer(r)
        r.stop_checker = StopChecker(p, set(e.eos_token_ids), e.tokenizer)
        if r.grammar is not None:
            e.jump_forward.start(r)
            r.raw_text = r.detokenizer.text


def _check_text(p) -> None:
    """Raises ValueError for a non-string, empty or non-UTF-8-encodable (lone surrogate) prompt."""
    if not isinstance(p, str):
        raise ValueError(f"prompt must be a string or a list of strings, got {type(p).__name__}")
    if not p:
        raise ValueError("prompt is empty")
    try:
        p.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"prompt is not valid Unicode text ({e.reason} at position {e.start})") from None


def _replace(p: SamplingParams, **changes) -> SamplingParams:
    import dataclasses
    return dataclasses.replace(p, **changes)
