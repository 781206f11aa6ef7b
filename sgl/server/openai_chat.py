"""``POST /v1/chat/completions``: chat template, sampling, streaming, logprobs, usage.

The prompt is built with the model's own chat template
(``tokenizer.apply_chat_template``); a template that rejects the messages
(e.g. a system message it does not allow) is a 400. ``n`` choices are ``n``
engine requests for the same prompt, batched by the engine (and sharing the
prompt's KV through the prefix cache).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from sgl.server.encoding import SafeJSONResponse
from sgl.server.errors import APIError, error_body
from sgl.server.openai_adapter import (chat_logprobs, finish_reason_of, matched_stop_of, merge_streams,
                                       raise_if_aborted, sampling_params_for, usage_of)
from sgl.server.openai_protocol import ChatCompletionRequest, ChatMessage
from sgl.server.openai_stream import ChoiceProgress, chunk_envelope
from sgl.server.sse import DONE_EVENT, EventStreamResponse, sse_event

router = APIRouter()


def _message_dict(msg: ChatMessage) -> tuple[dict, list[str]]:
    """A template-ready ``{"role", "content"}`` dict and the message's image URLs."""
    role = "system" if msg.role == "developer" else msg.role
    images: list[str] = []
    if isinstance(msg.content, list):
        texts = []
        for part in msg.content:
            if part.type == "text":
                texts.append(part.text)
            else:
                images.append(part.image_url.url)
        content = "\n".join(texts)
    else:
        content = msg.content or ""
    out = {"role": role, "content": content}
    if msg.name:
        out["name"] = msg.name
    return out, images


def render_chat_prompt(engine: Any, req: ChatCompletionRequest) -> tuple[list[int], list[str]]:
    """Token ids of the templated conversation and the image URLs it contains.

    Raises:
        APIError: 400 when the model has no chat template, the template rejects
            the messages, or the prompt does not fit the context window.
    """
    tokenizer = engine.tokenizer
    if not getattr(tokenizer, "chat_template", None):
        raise APIError("This model has no chat template; use /v1/completions.", param="messages")
    messages, images = [], []
    for msg in req.messages:
        m, imgs = _message_dict(msg)
        messages.append(m)
        images.extend(imgs)
    try:
        ids = tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=False,
            add_generation_prompt=not req.continue_final_message,
            continue_final_message=req.continue_final_message,
            **(req.chat_template_kwargs or {}))
    except Exception as exc:  # noqa: BLE001 - jinja2 TemplateError, ValueError, TypeError ...
        raise APIError(f"The chat template rejected the messages: {exc}", param="messages") from exc
    ids = list(ids)
    budget = req.max_new_tokens or 0
    context = int(engine.context_len)
    if len(ids) + max(budget, 1) > context:
        raise APIError(
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{len(ids) + budget} tokens ({len(ids)} in the messages, {budget} in the completion).",
            param="messages")
    return ids, images


def _engine_kwargs(req: ChatCompletionRequest, ids: list[int], images: list[str], i: int) -> dict:
    kwargs: dict[str, Any] = dict(
        input_ids=ids, sampling_params=sampling_params_for(req, req.max_new_tokens, i),
        return_logprob=req.logprobs, top_logprobs_num=(req.top_logprobs or 0) if req.logprobs else None,
        return_text_in_logprobs=req.logprobs)
    if images:
        kwargs["image_data"] = images[0] if len(images) == 1 else images
    if req.rid is not None:
        kwargs["rid"] = req.rid if req.n == 1 else f"{req.rid}-{i}"
    return kwargs


@router.post("/v1/chat/completions")
async def chat_completions(req: ChatCompletionRequest, request: Request) -> Response:
    """OpenAI chat completions (https://platform.openai.com/docs/api-reference/chat)."""
    state = request.app.state
    service = state.generation
    ids, images = render_chat_prompt(state.engine, req)
    model = state.server_config.served_model_name or req.model
    rid = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    all_kwargs = [_engine_kwargs(req, ids, images, i) for i in range(req.n)]

    if not req.stream:
        outs = await service.generate(
            request,
            input_ids=[k["input_ids"] for k in all_kwargs],
            sampling_params=[k["sampling_params"] for k in all_kwargs],
            return_logprob=req.logprobs, top_logprobs_num=all_kwargs[0]["top_logprobs_num"],
            return_text_in_logprobs=req.logprobs,
            image_data=[k["image_data"] for k in all_kwargs] if images else None,
            **({"rid": [k["rid"] for k in all_kwargs]} if req.rid is not None else {}))
        choices = []
        for i, out in enumerate(outs):
            meta = out["meta_info"]
            raise_if_aborted(meta)
            choice = {"index": i, "message": {"role": "assistant", "content": out["text"]},
                      "logprobs": None, "finish_reason": finish_reason_of(meta),
                      "matched_stop": matched_stop_of(meta)}
            if req.logprobs:
                choice["logprobs"] = chat_logprobs(meta.get("output_token_logprobs") or [],
                                                   meta.get("output_top_logprobs"))
            choices.append(choice)
        metas = [o["meta_info"] for o in outs]
        return SafeJSONResponse({"id": rid, "object": "chat.completion", "created": created, "model": model,
                                 "choices": choices, "usage": usage_of(metas[:1], metas)})

    streams = []
    try:
        for kwargs in all_kwargs:
            streams.append(await service.open_stream(**kwargs))
    except BaseException:
        for s in streams:
            s.abort()
        raise
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    continuous = bool(req.stream_options and req.stream_options.continuous_usage_stats)
    progress = [ChoiceProgress() for _ in streams]

    def envelope(choices: list, usage: Any = None) -> str:
        return sse_event(chunk_envelope(rid, "chat.completion.chunk", created, model, choices, usage))

    def running_usage() -> dict | None:
        if not continuous:
            return None
        metas = [p.last_meta for p in progress]
        return usage_of(metas[:1], metas)

    async def events():
        for i in range(len(streams)):
            yield envelope([{"index": i, "delta": {"role": "assistant", "content": ""},
                             "logprobs": None, "finish_reason": None}])
        try:
            async for i, chunk in merge_streams(streams):
                p = progress[i]
                meta = chunk.get("meta_info", {})
                p.last_meta = meta
                delta = p.text_delta(chunk)
                logprobs = None
                if req.logprobs:
                    toks, tops = p.logprob_delta(meta)
                    logprobs = chat_logprobs(toks, tops) if toks else None
                if delta or logprobs:
                    yield envelope([{"index": i, "delta": {"content": delta}, "logprobs": logprobs,
                                     "finish_reason": None}], running_usage())
                reason = finish_reason_of(meta)
                if reason is not None and not p.finished:
                    p.finished = True
                    yield envelope([{"index": i, "delta": {}, "logprobs": None, "finish_reason": reason,
                                     "matched_stop": matched_stop_of(meta)}], running_usage())
        except Exception as exc:  # noqa: BLE001 - in-band error, headers already sent
            yield sse_event(error_body(f"{type(exc).__name__}: {exc}", 500))
        if include_usage:
            metas = [p.last_meta for p in progress]
            yield envelope([], usage_of(metas[:1], metas))
        yield DONE_EVENT

    def abort_all() -> None:
        for s in streams:
            s.abort()

    return EventStreamResponse(events(), on_incomplete=abort_all)
