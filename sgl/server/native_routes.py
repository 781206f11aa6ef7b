"""Native routes, wire-compatible with SGLang's HTTP server.

``POST /generate``, ``GET /get_model_info``, ``GET /get_server_info`` (and
``/server_info``), ``GET /health``, ``GET /health_generate``,
``GET|POST /flush_cache``, ``POST /abort_request``, ``GET /metrics``, and the
extension ``POST /tokenize``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from sgl.server.encoding import SafeJSONResponse
from sgl.server.errors import APIError, error_body, format_validation_error
from sgl.server.protocol import AbortReq, FlushCacheReq, GenerateReqInput, TokenizeReq
from sgl.server.sse import DONE_EVENT, EventStreamResponse, sse_event

logger = logging.getLogger(__name__)
router = APIRouter()

HEALTH_GENERATE_TIMEOUT_S = 30.0


def _state(request: Request) -> Any:
    return request.app.state


@router.post("/generate")
async def generate(req: GenerateReqInput, request: Request) -> Response:
    """Generate from ``text`` or ``input_ids``; JSON ``{"text", "meta_info"}`` (a list for a
    batch) or, with ``stream``, SSE events of cumulative text ending in ``data: [DONE]``."""
    service = _state(request).generation
    vocab = getattr(_state(request).engine, "vocab_size", None)
    if req.top_logprobs_num and vocab and req.top_logprobs_num > int(vocab):
        raise APIError(f"'top_logprobs_num' must be <= the vocabulary size ({vocab}).", param="top_logprobs_num")
    kwargs = req.engine_kwargs()
    if req.rid is not None:
        kwargs["rid"] = req.rid
    if not req.stream:
        return SafeJSONResponse(await service.generate(request, **kwargs))

    stream = await service.open_stream(**kwargs)

    async def events():
        try:
            async for chunk in stream:
                yield sse_event(chunk)
        except Exception as exc:  # noqa: BLE001 - report in-band, the status line is already sent
            logger.exception("stream %s failed", stream.rid)
            yield sse_event(error_body(f"{type(exc).__name__}: {exc}", 500))
        yield DONE_EVENT

    return EventStreamResponse(events(), on_incomplete=stream.abort)


def chat_template_info(tokenizer: Any) -> dict:
    """What a remote client needs to render the model's chat template itself:
    the Jinja source, the BOS/EOS strings, and whether encoding adds BOS."""
    bos = getattr(tokenizer, "bos_token", None)
    try:
        adds_bos = bos is not None and list(tokenizer("a")["input_ids"][:1]) == [tokenizer.bos_token_id]
    except Exception:  # noqa: BLE001 - exotic tokenizers
        adds_bos = False
    return {"chat_template": getattr(tokenizer, "chat_template", None), "bos_token": bos,
            "eos_token": getattr(tokenizer, "eos_token", None), "add_bos_token": adds_bos}


@router.get("/get_model_info")
async def get_model_info(request: Request) -> Response:
    """``{"model_path", "tokenizer_path", "is_generation", ...}`` from the engine, plus (an
    extension) ``chat_template``, ``bos_token``, ``eos_token``, ``add_bos_token``."""
    engine = _state(request).engine
    info = dict(engine.get_model_info())
    info.update(chat_template_info(engine.tokenizer))
    return SafeJSONResponse(info)


@router.post("/tokenize")
async def tokenize(req: TokenizeReq, request: Request) -> Response:
    """Extension (as vLLM's): token ids of ``text`` (or of each text in a list) exactly as
    ``/generate`` would tokenize it. ``{"tokens": [...], "count": n}`` or lists of those."""
    tokenizer = _state(request).engine.tokenizer
    texts = req.text if isinstance(req.text, list) else [req.text]
    ids = [list(tokenizer(t)["input_ids"]) for t in texts]
    if isinstance(req.text, list):
        return SafeJSONResponse({"tokens": ids, "count": [len(x) for x in ids]})
    return SafeJSONResponse({"tokens": ids[0], "count": len(ids[0])})


def _redact(obj: Any) -> Any:
    """A copy with every ``api_key`` value replaced by ``"***"`` (the engine config holds it too)."""
    if isinstance(obj, dict):
        return {k: ("***" if k == "api_key" and v else _redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_redact(v) for v in obj]
    return obj


@router.get("/get_server_info")
@router.get("/server_info")
async def get_server_info(request: Request) -> Response:
    """Engine config, version, cache and pool stats, plus this server's settings (key redacted)."""
    state = _state(request)
    info = _redact(dict(await run_in_threadpool(state.engine.get_server_info)))
    info["server"] = state.server_config.public_dict()
    info["num_inflight_http_requests"] = len(state.generation.inflight)
    return SafeJSONResponse(info)


@router.get("/health")
async def health() -> Response:
    """Liveness: 200 as soon as the server accepts connections (no auth needed)."""
    return Response(status_code=200)


@router.get("/health_generate")
async def health_generate(request: Request) -> Response:
    """Readiness: 200 if a one-token generation completes within the timeout, else 503."""
    service = _state(request).generation
    try:
        await asyncio.wait_for(
            service.generate(input_ids=[0], sampling_params={"max_new_tokens": 1, "temperature": 0.0}),
            timeout=HEALTH_GENERATE_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - any failure means unhealthy
        raise APIError(f"Health check generation failed: {type(exc).__name__}: {exc}", 503) from exc
    return Response(status_code=200)


async def _optional_body(request: Request, model: type) -> Any:
    raw = await request.body()
    if not raw.strip():
        return model()
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise APIError(f"Malformed JSON body: {exc}") from exc
    if not isinstance(data, dict):
        raise APIError("The request body must be a JSON object.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message, param = format_validation_error(RequestValidationError(exc.errors()))
        raise APIError(message, param=param) from exc


@router.api_route("/flush_cache", methods=["GET", "POST"])
async def flush_cache(request: Request) -> Response:
    """Drop every cached prefix. Refused (400) while requests are running or queued."""
    await _optional_body(request, FlushCacheReq)
    state = _state(request)
    if state.generation.inflight or not await run_in_threadpool(state.engine.flush_cache):
        raise APIError("Cache not flushed: requests are running or waiting. "
                       "Retry when the server is idle.", 400)
    return SafeJSONResponse({"success": True, "message": "Cache flushed."})


@router.post("/abort_request")
async def abort_request(request: Request) -> Response:
    """Abort one request by ``rid`` (or all with ``abort_all``); its stream ends with
    finish_reason ``abort`` and its KV cache is freed."""
    req = await _optional_body(request, AbortReq) if (await request.body()).strip() else None
    if req is None:
        raise APIError("Give 'rid' (a request id) or 'abort_all': true.", param="rid")
    service = _state(request).generation
    if req.abort_all:
        return SafeJSONResponse({"success": True, "aborted": service.abort_all()})
    known = req.rid in service.inflight  # requests this server is serving now
    service.abort(req.rid)
    return SafeJSONResponse({"success": True, "aborted": int(known)})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    m = _state(request).metrics
    return Response(content=await run_in_threadpool(m.render), media_type=m.content_type)
