"""Translation between OpenAI request/response shapes and the engine's SGLang-style ones.

- :func:`sampling_params_for` maps OpenAI fields onto engine ``sampling_params``.
- :func:`finish_reason_of`, :func:`usage_of`: finish reasons and token counts.
- :func:`chat_logprobs`, :func:`completion_logprobs`: the two OpenAI logprob formats
  built from engine ``[logprob, token_id, text]`` triples.
- :func:`merge_streams`: interleave the chunks of several engine streams (``n`` > 1).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator, Sequence

from sgl.server.encoding import NEG_INF_LOGPROB
from sgl.server.errors import APIError
from sgl.server.openai_protocol import SamplingFields

# OpenAI field -> engine sampling_params key, copied when not None.
_DIRECT = {
    "temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
    "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
    "repetition_penalty": "repetition_penalty", "min_tokens": "min_new_tokens",
    "stop_token_ids": "stop_token_ids", "ignore_eos": "ignore_eos",
    "skip_special_tokens": "skip_special_tokens", "no_stop_trim": "no_stop_trim",
    "regex": "regex",
}


def sampling_params_for(req: SamplingFields, max_new_tokens: int | None, choice_index: int = 0) -> dict:
    """Engine ``sampling_params`` for one choice of an OpenAI request.

    ``seed`` becomes ``sampling_seed`` (``seed + choice_index``, so the ``n``
    choices differ but the whole response is reproducible). ``response_format``
    ``json_object`` constrains to any JSON object, ``json_schema`` to the schema
    (as a JSON string, SGLang's convention).
    """
    params: dict[str, Any] = {}
    if max_new_tokens is not None:
        params["max_new_tokens"] = max_new_tokens
    for src, dst in _DIRECT.items():
        value = getattr(req, src)
        if value is not None:
            params[dst] = value
    if req.stop_list:
        params["stop"] = req.stop_list
    if req.seed is not None:
        params["sampling_seed"] = req.seed + choice_index
    if req.logit_bias:
        params["logit_bias"] = dict(req.logit_bias)
    fmt = req.response_format
    if fmt is not None and fmt.type == "json_object":
        params["json_schema"] = json.dumps({"type": "object"})
    elif fmt is not None and fmt.type == "json_schema":
        params["json_schema"] = json.dumps(fmt.json_schema.schema_)
    return params


def finish_reason_of(meta: dict) -> str | None:
    """OpenAI ``finish_reason`` (``stop`` | ``length`` | ``abort``) from engine meta_info."""
    reason = meta.get("finish_reason")
    if reason is None:
        return None
    kind = reason.get("type") if isinstance(reason, dict) else str(reason)
    return kind if kind in ("stop", "length", "abort") else "stop"


def matched_stop_of(meta: dict) -> Any:
    """The stop string or token id that ended generation, if any (SGLang's ``matched_stop``)."""
    reason = meta.get("finish_reason")
    return reason.get("matched") if isinstance(reason, dict) else None


def raise_if_aborted(meta: dict) -> None:
    """Non-streamed results that were aborted become an error response."""
    reason = meta.get("finish_reason")
    if isinstance(reason, dict) and reason.get("type") == "abort":
        raise APIError(f"Request aborted: {reason.get('message') or 'aborted'}", 400)


def usage_of(prompt_metas: Sequence[dict], all_metas: Sequence[dict]) -> dict:
    """OpenAI ``usage``: prompt tokens counted once per distinct prompt, completions summed."""
    prompt = sum(int(m.get("prompt_tokens") or 0) for m in prompt_metas)
    completion = sum(int(m.get("completion_tokens") or 0) for m in all_metas)
    cached = sum(int(m.get("cached_tokens") or 0) for m in prompt_metas)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def _lp(value: Any) -> float:
    return NEG_INF_LOGPROB if value is None else float(value)


def _tok(text: Any) -> str:
    return "" if text is None else str(text)


def _entry(triple: Sequence[Any]) -> dict:
    text = _tok(triple[2] if len(triple) > 2 else None)
    return {"token": text, "logprob": _lp(triple[0]), "bytes": list(text.encode("utf-8"))}


def chat_logprobs(tokens: Sequence[Sequence[Any]], tops: Sequence[Any] | None) -> dict:
    """Chat-completions ``logprobs``: ``{"content": [{token, logprob, bytes, top_logprobs}]}``.

    Args:
        tokens: engine ``output_token_logprobs`` triples ``[logprob, token_id, text]``.
        tops: engine ``output_top_logprobs`` (a list of triples per position) or None.
    """
    content = []
    for i, triple in enumerate(tokens):
        item = _entry(triple)
        top = tops[i] if tops is not None and i < len(tops) and tops[i] else []
        item["top_logprobs"] = [_entry(t) for t in top]
        content.append(item)
    return {"content": content}


def completion_logprobs(tokens: Sequence[Sequence[Any]], tops: Sequence[Any] | None,
                        text_offset0: int = 0, with_top: bool = True) -> dict:
    """Legacy completions ``logprobs``: parallel lists ``tokens``, ``token_logprobs``,
    ``top_logprobs`` (dict token -> logprob per position) and ``text_offset`` (characters)."""
    out_tokens, out_lps, out_tops, offsets = [], [], [], []
    offset = text_offset0
    for i, triple in enumerate(tokens):
        text = _tok(triple[2] if len(triple) > 2 else None)
        out_tokens.append(text)
        out_lps.append(None if triple[0] is None else _lp(triple[0]))
        offsets.append(offset)
        offset += len(text)
        if with_top:
            top = tops[i] if tops is not None and i < len(tops) and tops[i] else None
            out_tops.append({_tok(t[2]): _lp(t[0]) for t in top} if top else None)
    return {"tokens": out_tokens, "token_logprobs": out_lps,
            "top_logprobs": out_tops if with_top else None, "text_offset": offsets}


async def merge_streams(streams: Sequence[Any]) -> AsyncIterator[tuple[int, dict]]:
    """Yield ``(stream_index, chunk)`` from several async-iterable streams as chunks arrive.

    An exception in any stream is re-raised here; closing this generator cancels
    the pumps (the caller aborts the engine requests).
    """
    if len(streams) == 1:
        async for chunk in streams[0]:
            yield 0, chunk
        return
    queue: asyncio.Queue = asyncio.Queue()
    end = object()

    async def pump(i: int, stream: Any) -> None:
        try:
            async for chunk in stream:
                await queue.put((i, chunk))
        except Exception as exc:  # noqa: BLE001 - forwarded to the consumer
            await queue.put((i, exc))
        finally:
            await queue.put((i, end))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            i, item = await queue.get()
            if item is end:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield i, item
    finally:
        for task in tasks:
            task.cancel()
