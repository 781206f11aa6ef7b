"""JSON encoding for responses: strict JSON even when logprobs are infinite.

Python's ``json`` writes ``-Infinity``/``NaN``, which are not JSON, and
Starlette's ``JSONResponse`` refuses them (a 500). A logprob of ``-inf`` (a token
a grammar mask made impossible) is written as ``-9999.0``, the value OpenAI's
API uses for "effectively impossible"; ``NaN`` becomes ``null``.
"""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.responses import JSONResponse

NEG_INF_LOGPROB = -9999.0


def _sanitize(obj: Any) -> Any:
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return NEG_INF_LOGPROB if obj < 0 else -NEG_INF_LOGPROB
        return obj
    if isinstance(obj, dict):
        return {k: _sanitize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_sanitize(v) for v in obj]
    return obj


def dumps(obj: Any) -> str:
    """Serialize to strict JSON (UTF-8 kept as is), replacing non-finite floats."""
    try:
        return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except ValueError:
        return json.dumps(_sanitize(obj), ensure_ascii=False, allow_nan=False, separators=(",", ":"))


class SafeJSONResponse(JSONResponse):
    """``JSONResponse`` that encodes with :func:`dumps`."""

    def render(self, content: Any) -> bytes:
        return dumps(content).encode("utf-8")
