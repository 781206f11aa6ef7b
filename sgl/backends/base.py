"""The ``Backend`` interface: what the frontend interpreter calls.

A backend turns a program's current prompt into model calls.  Three
implementations are planned: the local in-process engine
(:class:`sgl.backends.engine_backend.EngineBackend`), a ``RuntimeEndpoint``
speaking SGLang's native HTTP protocol, and an OpenAI-API backend.

The interpreter hands the backend a :class:`Prompt` snapshot (never its own
mutable state), so a backend needs no knowledge of the interpreter.

Contract (all methods may be called concurrently from many threads):

* ``generate(prompt, params) -> (text, meta_info)``: continue ``prompt.text``.
  ``params`` is a fully merged :class:`SglSamplingParams` whose ``dtype`` may
  still be set; call :func:`prepare_sampling_params` to map it to a regex.
  ``meta_info`` uses the engine's keys (``prompt_tokens``,
  ``completion_tokens``, ``cached_tokens``, ``finish_reason``, logprobs...).
* ``generate_stream(prompt, params)``: an iterator of ``(delta_text,
  meta_info)`` whose deltas concatenate to what ``generate`` would return.
* ``select(prompt, choices, temperature, choices_method) -> ChoicesDecision``:
  score each ``prompt.text + choice`` and let ``choices_method`` decide; the
  decision's meta info carries the per-choice scores.
* ``cache_prefix(text)``: make ``text`` resident in the prefix cache (no-op
  where caching is not under our control).
* ``commit_lazy_operations(prompt)``: flush anything the backend deferred and
  commit ``prompt.text`` as a shared prefix (called once before ``fork``).
* ``get_chat_template()``: the :class:`ChatTemplate` roles render with.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

from sgl.backends.chat_template import ChatTemplate, get_chat_template
from sgl.backends.choices import ChoicesDecision, ChoicesSamplingMethod
from sgl.backends.sampling_params import SglSamplingParams


@dataclass(frozen=True)
class Prompt:
    """Read-only snapshot of a program's state at a model call.

    Attributes:
        text: the whole prompt text so far (roles already rendered).
        messages: finished messages in OpenAI format (``{"role", "content"}``).
        cur_role: the open role (``"assistant"`` inside ``assistant(...)``) or None.
        cur_role_text: text appended since the open role began (after its prefix).
        images: images placed so far, each ``(source, base64_data)``.
    """

    text: str
    messages: Tuple[Dict[str, Any], ...] = ()
    cur_role: Optional[str] = None
    cur_role_text: str = ""
    images: Tuple[Tuple[Any, str], ...] = ()


def prepare_sampling_params(params: SglSamplingParams) -> SglSamplingParams:
    """Resolve ``dtype`` into ``regex`` (+ stop strings), warning if both are set."""
    if params.dtype is not None and params.regex is not None:
        import warnings

        warnings.warn(f"both dtype ({params.dtype!r}) and regex are set; dtype wins", stacklevel=2)
    return params.resolve_dtype()


class Backend(ABC):
    """Abstract frontend backend (see the module docstring for the contract)."""

    #: True when ``image()`` nodes can be sent to this backend's model.
    supports_images: bool = False
    #: True for chat-only APIs that cannot continue arbitrary text.
    is_chat_model: bool = False

    def __init__(self, chat_template: Optional[ChatTemplate] = None):
        self.chat_template = chat_template or get_chat_template("default")

    # -- required -----------------------------------------------------------------
    @abstractmethod
    def generate(self, prompt: Prompt, sampling_params: SglSamplingParams) -> Tuple[str, Dict[str, Any]]:
        """Continue ``prompt``; returns ``(text, meta_info)``."""

    @abstractmethod
    def generate_stream(self, prompt: Prompt, sampling_params: SglSamplingParams) -> Iterator[Tuple[str, Dict[str, Any]]]:
        """Continue ``prompt`` incrementally; yields ``(delta_text, meta_info)``."""

    @abstractmethod
    def select(self, prompt: Prompt, choices: List[str], temperature: float,
               choices_method: ChoicesSamplingMethod) -> ChoicesDecision:
        """Pick one of ``choices`` as the continuation of ``prompt``."""

    # -- optional -----------------------------------------------------------------
    def get_chat_template(self) -> ChatTemplate:
        return self.chat_template

    def get_model_name(self) -> str:
        raise NotImplementedError(f"{type(self).__name__} does not report a model name")

    def cache_prefix(self, prefix_text: str) -> None:
        """Make ``prefix_text`` resident in the prefix cache (default: no-op)."""

    def commit_lazy_operations(self, prompt: Prompt) -> None:
        """Commit ``prompt.text`` before a fork (default: :meth:`cache_prefix`)."""
        if prompt.text:
            self.cache_prefix(prompt.text)

    def flush_cache(self) -> bool:
        """Drop cached prefixes; True on success (default: nothing to flush)."""
        return True

    def get_server_info(self) -> Dict[str, Any]:
        return {}

    def shutdown(self) -> None:
        """Release resources (default: nothing)."""
