"""Derive a :class:`ChatTemplate` from a tokenizer's own Jinja chat template.

The frontend renders roles incrementally (``user_begin`` appends a prefix,
``user_end`` a suffix), so it needs per-role prefix/suffix strings rather than
a whole-conversation renderer.  We recover them by rendering probe
conversations with sentinel contents through
``tokenizer.apply_chat_template`` and cutting the text around the sentinels:

* ``[system S]``            -> system prefix, system suffix
* ``[system S, user U]``    -> user prefix (text between the two messages)
* ``[system S, user U, assistant A]`` -> assistant prefix and suffix
* ``[user U]``              -> text before the user prefix that is not there
  when a system message is given = the template's default system message.

Templates that cannot be probed this way (they reject a system message, or
the pieces are inconsistent) fall back to a named template matched from the
model path, then to ``chatml``.
"""

from __future__ import annotations

import logging
from typing import Optional

from sgl.backends.chat_template import ChatTemplate, get_chat_template, match_chat_template

logger = logging.getLogger(__name__)

_S, _U, _A = "\x1eSYS\x1e", "\x1eUSR\x1e", "\x1eAST\x1e"


def _render(tokenizer, messages) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)


def _strip_bos(text: str, bos: Optional[str]) -> str:
    return text[len(bos):] if bos and text.startswith(bos) else text


def derive_chat_template(tokenizer, name: str = "model") -> ChatTemplate:
    """Build a ChatTemplate from ``tokenizer.chat_template`` by probing (see module doc).

    A leading BOS token is dropped from the rendered text when the tokenizer
    adds it itself on encode.

    Raises:
        ValueError: the tokenizer has no chat template, or probing gave
            inconsistent pieces.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("tokenizer has no chat_template")
    bos = getattr(tokenizer, "bos_token", None)
    try:
        adds_bos = bos is not None and tokenizer.encode("a")[:1] == [tokenizer.bos_token_id]
    except Exception:  # pragma: no cover - exotic tokenizers
        adds_bos = False
    strip = (lambda t: _strip_bos(t, bos)) if adds_bos else (lambda t: t)

    sys_only = strip(_render(tokenizer, [{"role": "system", "content": _S}]))
    sys_user = strip(_render(tokenizer, [{"role": "system", "content": _S}, {"role": "user", "content": _U}]))
    full = strip(_render(tokenizer, [
        {"role": "system", "content": _S},
        {"role": "user", "content": _U},
        {"role": "assistant", "content": _A},
    ]))
    user_only = strip(_render(tokenizer, [{"role": "user", "content": _U}]))

    sys_prefix, sys_suffix = sys_only.split(_S)
    if not sys_user.startswith(sys_only):
        raise ValueError("rendering [system, user] does not extend rendering [system]")
    user_prefix, user_suffix = sys_user[len(sys_only):].split(_U)
    if not full.startswith(sys_user):
        raise ValueError("rendering [system, user, assistant] does not extend rendering [system, user]")
    asst_prefix, asst_suffix = full[len(sys_user):].split(_A)

    # Default system prompt: whatever the template inserts before the user turn.
    default_system = None
    head = user_only[: user_only.index(user_prefix + _U)] if (user_prefix + _U) in user_only else ""
    if head:
        if head.startswith(sys_prefix) and head.endswith(sys_suffix) and len(head) >= len(sys_prefix) + len(sys_suffix):
            default_system = head[len(sys_prefix): len(head) - len(sys_suffix)]
        else:
            raise ValueError(f"cannot interpret the text the template puts before a user turn: {head!r}")

    stop = asst_suffix.strip()
    return ChatTemplate(
        name=name,
        default_system_prompt=default_system,
        role_prefix_and_suffix={
            "system": (sys_prefix, sys_suffix),
            "user": (user_prefix, user_suffix),
            "assistant": (asst_prefix, asst_suffix),
        },
        stop_str=(stop,) if stop else (),
    )


def chat_template_from_tokenizer(tokenizer, model_path: str = "") -> ChatTemplate:
    """The model's chat template as a :class:`ChatTemplate`.

    Tries :func:`derive_chat_template`; if the tokenizer has no template or
    probing fails, falls back to :func:`match_chat_template` on
    ``model_path`` and finally to ``chatml`` (logging a warning).
    """
    try:
        return derive_chat_template(tokenizer, name=f"hf:{model_path or 'model'}")
    except Exception as e:  # jinja raises its own TemplateError types
        fallback = match_chat_template(model_path) or get_chat_template("chatml")
        logger.warning("could not derive the chat template from the tokenizer (%s); using %r", e, fallback.name)
        return fallback
