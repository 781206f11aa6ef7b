"""``POST /v1/completions`` (OpenAI legacy completions) and ``GET /v1/models``.

Each prompt gets ``n`` choices; choice ``index`` is ``prompt_index * n + j``.
``echo`` prepends the prompt (with its logprobs when ``logprobs`` is set; the
first prompt token has logprob null, as in OpenAI's API).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from sgl.server.encoding import SafeJSONResponse
from sgl.server.errors import error_body
from sgl.server.openai_adapter import (completion_logprobs, finish_reason_of, matched_stop_of,
                                       merge_streams, raise_if_aborted, sampling_params_for, usage_of)
from sgl.server.openai_protocol import CompletionRequest
from sgl.server.openai_stream import ChoiceProgress, chunk_envelope
from sgl.server.sse import DONE_EVENT, EventStreamResponse, sse_event

router = APIRouter()


def _prompts(req: CompletionRequest) -> tuple[str, list]:
    """``("prompt", [str, ...])`` or ``("input_ids", [[int, ...], ...])``."""
    p = req.prompt
    if isinstance(p, str):
        return "prompt", [p]
    if all(isinstance(x, str) for x in p):
        return "prompt", list(p)
    if all(isinstance(x, int) for x in p):
        return "input_ids", [list(p)]
    return "input_ids", [list(x) for x in p]


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    """The one served model, OpenAI ``list`` format (plus ``max_model_len``)."""
    state = request.app.state
    name = state.server_config.served_model_name
    return SafeJSONResponse({"object": "list", "data": [{
        "id": name, "object": "model", "created": state.started_at, "owned_by": "sgl", "root": name,
        "max_model_len": int(state.engine.context_len)}]})


@router.post("/v1/completions")
async def completions(req: CompletionRequest, request: Request) -> Response:
    """OpenAI completions (https://platform.openai.com/docs/api-reference/completions)."""
    state = request.app.state
    service = state.generation
    kind, prompts = _prompts(req)
    model = state.server_config.served_model_name or req.model
    rid = f"cmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    want_lp = req.logprobs is not None
    common = dict(return_logprob=want_lp, top_logprobs_num=req.logprobs if want_lp else None,
                  return_text_in_logprobs=want_lp,
                  logprob_start_len=0 if (req.echo and want_lp) else None)
    items = [(p_idx, prompt) for p_idx, prompt in enumerate(prompts) for _ in range(req.n)]
    params = [sampling_params_for(req, req.max_tokens, i) for i in range(len(items))]

    if not req.stream:
        outs = await service.generate(request, **{kind: [prompt for _, prompt in items]}, sampling_params=params,
                                      **common)
        choices = []
        for i, out in enumerate(outs):
            meta = out["meta_info"]
            raise_if_aborted(meta)
            prompt = items[i][1]
            prefix = ""
            if req.echo:
                prefix = prompt if kind == "prompt" else state.engine.tokenizer.decode(prompt)
            logprobs = None
            if want_lp:
                toks = list(meta.get("output_token_logprobs") or [])
                tops = list(meta.get("output_top_logprobs") or [None] * len(toks))
                if req.echo:
                    toks = list(meta.get("input_token_logprobs") or []) + toks
                    tops = list(meta.get("input_top_logprobs") or [None] * (len(toks) - len(tops))) + tops
                logprobs = completion_logprobs(toks, tops, with_top=req.logprobs > 0 or req.echo)
            choices.append({"index": i, "text": prefix + out["text"], "logprobs": logprobs,
                            "finish_reason": finish_reason_of(meta), "matched_stop": matched_stop_of(meta)})
        metas = [o["meta_info"] for o in outs]
        return SafeJSONResponse({"id": rid, "object": "text_completion", "created": created, "model": model,
                                 "choices": choices, "usage": usage_of(metas[::req.n], metas)})

    streams = []
    try:
        for i, (_, prompt) in enumerate(items):
            streams.append(await service.open_stream(**{kind: prompt}, sampling_params=params[i], **common))
    except BaseException:
        for s in streams:
            s.abort()
        raise
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    progress = [ChoiceProgress() for _ in streams]

    def envelope(choices: list, usage: Any = None) -> str:
        return sse_event(chunk_envelope(rid, "text_completion", created, model, choices, usage))

    async def events():
        try:
            async for i, chunk in merge_streams(streams):
                p = progress[i]
                meta = chunk.get("meta_info", {})
                p.last_meta = meta
                delta = p.text_delta(chunk)
                logprobs = None
                if want_lp:
                    toks, tops = p.logprob_delta(meta)
                    logprobs = completion_logprobs(toks, tops, with_top=req.logprobs > 0) if toks else None
                reason = finish_reason_of(meta)
                if delta or logprobs or (reason is not None and not p.finished):
                    p.finished = p.finished or reason is not None
                    yield envelope([{"index": i, "text": delta, "logprobs": logprobs, "finish_reason": reason,
                                     "matched_stop": matched_stop_of(meta)}])
        except Exception as exc:  # noqa: BLE001 - in-band error, headers already sent
            yield sse_event(error_body(f"{type(exc).__name__}: {exc}", 500))
        if include_usage:
            metas = [p.last_meta for p in progress]
            yield envelope([], usage_of(metas[::req.n], metas))
        yield DONE_EVENT

    def abort_all() -> None:
        for s in streams:
            s.abort()

    return EventStreamResponse(events(), on_incomplete=abort_all)
