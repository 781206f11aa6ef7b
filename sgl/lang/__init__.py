"""The SGLang-style frontend language: ``@function`` programs built from
``gen``, ``select``, roles, ``fork`` and friends, run on a pluggable Backend.

``from sgl.lang import *`` exports exactly the names in ``__all__``.
"""

from sgl.lang.api import (
    assistant,
    assistant_begin,
    assistant_end,
    flush_cache,
    function,
    gen,
    gen_int,
    gen_string,
    get_server_info,
    image,
    select,
    system,
    system_begin,
    system_end,
    user,
    user_begin,
    user_end,
)
from sgl.backends.chat_template import ChatTemplate, get_chat_template
from sgl.backends.choices import (
    greedy_token_selection,
    token_length_normalized,
    unconditional_likelihood_normalized,
)
from sgl.lang.function import SglFunction
from sgl.lang.global_config import get_default_backend, set_default_backend
from sgl.lang.interpreter import ProgramError
from sgl.lang.state import ProgramState, ProgramStateGroup
from sgl.lang.utils import load_image, print_highlight

__all__ = [
    "function",
    "gen",
    "gen_int",
    "gen_string",
    "select",
    "image",
    "system",
    "user",
    "assistant",
    "system_begin",
    "system_end",
    "user_begin",
    "user_end",
    "assistant_begin",
    "assistant_end",
    "set_default_backend",
    "get_default_backend",
    "flush_cache",
    "get_server_info",
    "token_length_normalized",
    "greedy_token_selection",
    "unconditional_likelihood_normalized",
    "ChatTemplate",
    "get_chat_template",
    "SglFunction",
    "ProgramState",
    "ProgramStateGroup",
    "ProgramError",
    "print_highlight",
    "load_image",
]
