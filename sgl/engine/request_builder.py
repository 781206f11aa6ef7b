"""Turning ``Engine.generate`` arguments into validated Reqs (in the caller's thread).

Every check happens here, before anything is queued, so bad input raises a
ValueError naming the field and never reaches the scheduler.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from sgl.engine.detokenizer import IncrementalDetokenizer
from sgl.engine.jump_forward import JumpForward
from sgl.engine.req import LogprobRequest, Req
from sgl.engine.sampling.sampling_params import SamplingParams
from sgl.engine.stop import StopChecker
from sgl.grammar.base import GrammarBackend


@dataclass(frozen=True)
class ModelInfo:
    """What request validation needs to know of the served model.

    Attributes:
        model_path: shown in errors.
        vocab_size: token ids must be below it.
        context_len: max tokens per request (prompt + output).
        kv_pool_size: KV pool size in tokens (a prompt must fit it).
        eos_token_ids: the model's end-of-sequence ids.
        grammar_backend: the configured grammar backend's name (``grammar.backend``).
    """
    model_path: str
    vocab_size: int
    context_len: int
    kv_pool_size: int
    eos_token_ids: Tuple[int, ...]
    grammar_backend: str = "builtin"


@dataclass(frozen=True)
class GenerateRequest:
    """The arguments of ``Engine.generate`` (SGLang's ``/generate`` fields), as given by the caller.

    Exactly one of ``prompt`` (a string or list of strings) and ``input_ids`` (a list of ints or of
    lists of ints) is set; list-valued fields may give one value per prompt. Validation happens in
    :meth:`RequestBuilder.build`.
    """
    prompt: Union[str, List[str], None] = None
    input_ids: Any = None
    sampling_params: Union[Dict[str, Any], List[Dict[str, Any]], SamplingParams, None] = None
    return_logprob: Any = False
    logprob_start_len: Any = None
    top_logprobs_num: Any = None
    return_text_in_logprobs: bool = False
    stream: bool = False
    rid: Any = None
    image_data: Any = None


def _per_item(value, n: int, name: str) -> list:
    """Broadcast a scalar argument to ``n`` prompts, or check a list's length."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} entries but there are {n} prompts")
        return list(value)
    return [value] * n


class RequestBuilder:
    """Validates inputs and builds Reqs for an Engine.

    Args:
        model_info: limits of the served model.
        tokenizer: the model's tokenizer (calls are serialized: HF fast tokenizers are not thread-safe).
        grammar_factory: builds the grammar backend on first use (regex / JSON-schema requests).
        jump_forward: the engine's jump-forward policy (text a grammar forces from its start state).
    """

    def __init__(self, model_info: ModelInfo, tokenizer, grammar_factory: Callable[[], GrammarBackend],
                 jump_forward: JumpForward):
        self.model_info = model_info
        self.tokenizer = tokenizer
        self.grammar_factory = grammar_factory
        self.jump_forward = jump_forward
        self._tok_lock = threading.Lock()
        self._grammar_backend: Optional[GrammarBackend] = None
        self._grammar_lock = threading.Lock()

    def new_detokenizer(self, r: Req) -> IncrementalDetokenizer:
        p = r.sampling_params
        return IncrementalDetokenizer(self.tokenizer, skip_special_tokens=p.skip_special_tokens,
                                      spaces_between_special_tokens=p.spaces_between_special_tokens,
                                      prompt_ids=r.input_ids)

    @property
    def grammar_backend(self) -> GrammarBackend:
        with self._grammar_lock:
            if self._grammar_backend is None:
                self._grammar_backend = self.grammar_factory()
            return self._grammar_backend

    def tokenize(self, text: str) -> List[int]:
        with self._tok_lock:
            return list(self.tokenizer(text)["input_ids"])

    # ------------------------------------------------------------ build
    def build(self, g: GenerateRequest) -> Tuple[List[Req], bool]:
        """Returns (reqs, single). A prompt with ``n > 1`` expands into n Reqs (single becomes False).

        Raises:
            ValueError: naming the offending field.
        """
        prompt, input_ids, sampling_params, stream = g.prompt, g.input_ids, g.sampling_params, g.stream
        if g.image_data is not None:
            raise ValueError(f"image_data was given but the model ({self.model_info.model_path}) is text-only")
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
        lps = _per_item(g.return_logprob, n, "return_logprob")
        starts = _per_item(g.logprob_start_len, n, "logprob_start_len")
        tops = _per_item(g.top_logprobs_num, n, "top_logprobs_num")
        rids = _per_item(g.rid, n, "rid") if g.rid is not None else [None] * n
        reqs: List[Req] = []
        for i, ids in enumerate(token_lists):
            sp = self._params(params[i])
            self._check_ids(ids)
            lp = self._logprob(lps[i], starts[i], tops[i], g.return_text_in_logprobs, len(ids))
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
        sp.verify(self.model_info.vocab_size)
        return sp.normalize()

    def _check_ids(self, ids: Sequence[Any]) -> None:
        e = self.model_info
        if not ids:
            raise ValueError("input_ids is empty")
        for t in ids:
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < e.vocab_size:
                raise ValueError(f"input_ids must be ints in [0, {e.vocab_size}), got {t!r}")
        if len(ids) >= e.context_len:
            raise ValueError(f"the input ({len(ids)} tokens) is longer than the model's context length "
                             f"({e.context_len} tokens)")
        if len(ids) + 1 > e.kv_pool_size:
            raise ValueError(f"the input ({len(ids)} tokens) does not fit the KV pool "
                             f"({e.kv_pool_size} tokens)")

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
        if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= self.model_info.vocab_size:
            raise ValueError(f"top_logprobs_num must be an int in [0, {self.model_info.vocab_size}], got {top!r}")
        return LogprobRequest(True, start, top, bool(return_text))

    def _attach(self, r: Req, k: int) -> None:
        e, p = self.model_info, r.sampling_params
        room = e.context_len - len(r.input_ids)
        if p.max_new_tokens > room:  # clip to the context window, as SGLang does
            p = r.sampling_params = _replace(p, max_new_tokens=room, min_new_tokens=min(p.min_new_tokens, room))
        if p.sampling_seed is not None:
            r.generator = torch.Generator().manual_seed(int(p.sampling_seed) + k)
        if p.regex is not None or p.json_schema is not None:
            r.grammar = self.grammar_backend.compile(regex=p.regex, json_schema=p.json_schema)
        r.detokenizer = self.new_detokenizer(r)
        r.stop_checker = StopChecker(p, set(e.eos_token_ids), self.tokenizer)
        if r.grammar is not None:
            self.jump_forward.start(r)  # the scheduler checks the forced text's stop conditions
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
