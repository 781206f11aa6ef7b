"""Chat templates: how roles are rendered into prompt text.

A :class:`ChatTemplate` gives, per role, the text placed before and after the
message content (``role_prefix_and_suffix``), a default system prompt that is
inserted when a conversation does not start with one, and stop strings added
to every ``gen`` (e.g. ``<|im_end|>``).  Named templates follow SGLang's
``python/sglang/lang/chat_template.py``; a model's own Jinja template is
converted by :func:`sgl.backends.hf_chat_template.chat_template_from_tokenizer`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, auto
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union


class ChatTemplateStyle(Enum):
    PLAIN = auto()
    LLAMA2 = auto()  # the system prompt lives inside the first [INST] block


@dataclass(frozen=True)
class ChatTemplate:
    """Role rendering rules (see module docstring)."""

    name: str
    default_system_prompt: Optional[str]
    role_prefix_and_suffix: Dict[str, Tuple[str, str]]
    stop_str: Tuple[str, ...] = ()
    image_token: str = "<image>"
    style: ChatTemplateStyle = ChatTemplateStyle.PLAIN

    @property
    def known_roles(self) -> Tuple[str, ...]:
        return tuple(self.role_prefix_and_suffix)

    def get_prefix_and_suffix(self, role: str, hist_messages: Sequence[dict]) -> Tuple[str, str]:
        """Prefix and suffix for a message of ``role`` following ``hist_messages``.

        Raises:
            ValueError: ``role`` is not one of this template's roles.
        """
        if role not in self.role_prefix_and_suffix:
            raise ValueError(f"unknown role {role!r} for chat template {self.name!r}; known roles: {list(self.known_roles)}")
        prefix, suffix = self.role_prefix_and_suffix[role]
        if self.style == ChatTemplateStyle.LLAMA2:
            if role == "system" and not hist_messages:
                user_prefix, _ = self.role_prefix_and_suffix["user"]
                return user_prefix + prefix, suffix
            if role == "user" and len(hist_messages) == 1 and hist_messages[0]["role"] == "system":
                return "", suffix
        return prefix, suffix

    def get_prompt(self, messages: Sequence[dict]) -> str:
        """Render OpenAI-style ``messages`` (content must be str) into text."""
        out = ""
        for i, m in enumerate(messages):
            prefix, suffix = self.get_prefix_and_suffix(m["role"], messages[:i])
            out += f"{prefix}{m['content']}{suffix}"
        return out


chat_template_registry: Dict[str, ChatTemplate] = {}


def register_chat_template(template: ChatTemplate, *aliases: str) -> ChatTemplate:
    for name in (template.name, *aliases):
        chat_template_registry[name] = template
    return template


def get_chat_template(name: str) -> ChatTemplate:
    """A named template.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    if name not in chat_template_registry:
        raise ValueError(f"unknown chat template {name!r}; known: {sorted(chat_template_registry)}")
    return chat_template_registry[name]


def resolve_chat_template(arg: Union[str, ChatTemplate, None],
                          model_template: Callable[[], ChatTemplate]) -> ChatTemplate:
    """A backend's ``chat_template`` argument as a template: a :class:`ChatTemplate` as is, a
    name through :func:`get_chat_template`, None as ``model_template()`` (the served model's own).

    Raises:
        ValueError: unknown name, or an argument of another type.
    """
    if isinstance(arg, ChatTemplate):
        return arg
    if isinstance(arg, str):
        return get_chat_template(arg)
    if arg is None:
        return model_template()
    raise ValueError(f"chat_template must be a name, a ChatTemplate or None, got {type(arg).__name__}")


def match_chat_template(model_path: str) -> Optional[ChatTemplate]:
    """Guess a named template from a model path (None when nothing matches)."""
    p = model_path.lower()
    rules: List[Tuple[Tuple[str, ...], str]] = [
        (("llama-3", "llama3"), "llama-3-instruct"),
        (("llama-2", "mistral", "mixtral", "codellama"), "llama-2-chat"),
        (("qwen",), "qwen"),
        (("gemma",), "gemma-it"),
        (("vicuna", "llava-v1.5"), "vicuna_v1.1"),
        (("smollm", "chatml", "tinyllama"), "chatml"),
    ]
    for keys, name in rules:
        if any(k in p for k in keys):
            return chat_template_registry[name]
    return None


def _chatml_like(name: str, default_system_prompt: Optional[str]) -> ChatTemplate:
    return ChatTemplate(
        name=name,
        default_system_prompt=default_system_prompt,
        role_prefix_and_suffix={
            "system": ("<|im_start|>system\n", "<|im_end|>\n"),
            "user": ("<|im_start|>user\n", "<|im_end|>\n"),
            "assistant": ("<|im_start|>assistant\n", "<|im_end|>\n"),
        },
        stop_str=("<|im_end|>",),
    )


register_chat_template(ChatTemplate(
    name="default",
    default_system_prompt=None,
    role_prefix_and_suffix={"system": ("SYSTEM:", "\n"), "user": ("USER:", "\n"), "assistant": ("ASSISTANT:", "\n")},
))
register_chat_template(ChatTemplate(
    name="claude",
    default_system_prompt=None,
    role_prefix_and_suffix={"system": ("", ""), "user": ("\n\nHuman: ", ""), "assistant": ("\n\nAssistant:", "")},
))
register_chat_template(_chatml_like("chatml", None))
register_chat_template(_chatml_like("qwen", "You are a helpful assistant."))
register_chat_template(_chatml_like(
    "smollm2", "You are a helpful AI assistant named SmolLM, trained by Hugging Face"))
register_chat_template(ChatTemplate(
    name="llama-2-chat",
    default_system_prompt=None,
    role_prefix_and_suffix={
        "system": ("<<SYS>>\n", "\n<</SYS>>\n\n"),
        "user": ("[INST] ", " [/INST]"),
        "assistant": ("", " </s><s>"),
    },
    style=ChatTemplateStyle.LLAMA2,
))
register_chat_template(ChatTemplate(
    name="llama-3-instruct",
    default_system_prompt=None,
    role_prefix_and_suffix={
        r: (f"<|start_header_id|>{r}<|end_header_id|>\n\n", "<|eot_id|>") for r in ("system", "user", "assistant")
    },
    stop_str=("<|eot_id|>",),
    image_token="<|image|>",
), "llama-3")
register_chat_template(ChatTemplate(
    name="vicuna_v1.1",
    default_system_prompt=(
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions."
    ),
    role_prefix_and_suffix={"system": ("", " "), "user": ("USER:", " "), "assistant": ("ASSISTANT:", "</s>")},
    image_token=" <image>\n",
))
register_chat_template(ChatTemplate(
    name="gemma-it",
    default_system_prompt=None,
    role_prefix_and_suffix={
        "system": ("", ""),
        "user": ("<start_of_turn>user\n", "<end_of_turn>\n"),
        "assistant": ("<start_of_turn>model\n", "<end_of_turn>\n"),
    },
    stop_str=("<end_of_turn>",),
))
