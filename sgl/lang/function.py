"""``SglFunction``: what ``@function`` turns a Python function into."""

from __future__ import annotations

import inspect
from typing import Any, Dict, List, Optional, Union

from sgl.lang.ir import SglSamplingParams


def _defaults(max_new_tokens, stop, stop_token_ids, temperature, top_p, top_k, min_p, frequency_penalty,
              presence_penalty, ignore_eos, return_logprob, logprob_start_len, top_logprobs_num,
              return_text_in_logprobs) -> SglSamplingParams:
    return SglSamplingParams(
        max_new_tokens=max_new_tokens, stop=stop, stop_token_ids=stop_token_ids, temperature=temperature,
        top_p=top_p, top_k=top_k, min_p=min_p, frequency_penalty=frequency_penalty,
        presence_penalty=presence_penalty, ignore_eos=ignore_eos, return_logprob=return_logprob,
        logprob_start_len=logprob_start_len, top_logprobs_num=top_logprobs_num,
        return_text_in_logprobs=return_text_in_logprobs)


class SglFunction:
    """A frontend program: a Python function whose first parameter is the state ``s``.

    Calling it runs it (``prog(*args, **kwargs)`` is ``prog.run(...)``).

    Raises:
        ValueError: the function's first parameter is not named ``s``.
    """

    def __init__(self, func, bind_arguments: Optional[Dict[str, Any]] = None):
        self.func = func
        self.bind_arguments = dict(bind_arguments or {})
        spec = inspect.getfullargspec(func)
        if not spec.args or spec.args[0] != "s":
            raise ValueError(f"@function {func.__name__}: the first argument must be named 's'")
        self.arg_names: List[str] = spec.args[1:]
        self.arg_defaults = spec.defaults or ()
        self.__name__ = getattr(func, "__name__", "program")
        self.__doc__ = func.__doc__

    def bind(self, **kwargs) -> "SglFunction":
        """A copy with some arguments fixed."""
        unknown = set(kwargs) - set(self.arg_names)
        if unknown:
            raise ValueError(f"{self.__name__} has no argument(s) {sorted(unknown)}")
        return SglFunction(self.func, {**self.bind_arguments, **kwargs})

    def run(self, *args, max_new_tokens: int = 128, stop: Union[str, List[str], None] = None,
            stop_token_ids: Optional[List[int]] = None, temperature: float = 1.0, top_p: float = 1.0,
            top_k: int = -1, min_p: float = 0.0, frequency_penalty: float = 0.0, presence_penalty: float = 0.0,
            ignore_eos: bool = False, return_logprob: Optional[bool] = None, logprob_start_len: Optional[int] = None,
            top_logprobs_num: Optional[int] = None, return_text_in_logprobs: Optional[bool] = None,
            stream: bool = False, backend=None, **kwargs):
        """Run once; the sampling keywords are defaults for every gen() in the program.

        Returns:
            The :class:`~sgl.lang.state.ProgramState` (``state.ret_value``
            holds what the function returned).  Without ``stream`` it has
            finished; an exception from the program is raised here.
        """
        from sgl.lang.run import run_program

        params = _defaults(max_new_tokens, stop, stop_token_ids, temperature, top_p, top_k, min_p,
                           frequency_penalty, presence_penalty, ignore_eos, return_logprob, logprob_start_len,
                           top_logprobs_num, return_text_in_logprobs)
        return run_program(self, backend, args, kwargs, params, stream)

    def run_batch(self, batch_kwargs, *, max_new_tokens: int = 128, stop: Union[str, List[str], None] = None,
                  stop_token_ids: Optional[List[int]] = None, temperature: float = 1.0, top_p: float = 1.0,
                  top_k: int = -1, min_p: float = 0.0, frequency_penalty: float = 0.0,
                  presence_penalty: float = 0.0, ignore_eos: bool = False, return_logprob: Optional[bool] = None,
                  logprob_start_len: Optional[int] = None, top_logprobs_num: Optional[int] = None,
                  return_text_in_logprobs: Optional[bool] = None, backend=None,
                  num_threads: Union[str, int] = "auto", progress_bar: bool = False):
        """Run once per element of ``batch_kwargs`` (dicts, or tuples of positional
        values) concurrently; see :func:`sgl.lang.run.run_program_batch`.

        Raises:
            ValueError: ``batch_kwargs`` is not a list/tuple, or a positional
                tuple does not fit the signature.
        """
        from sgl.lang.run import run_program_batch

        if not isinstance(batch_kwargs, (list, tuple)):
            raise ValueError(f"batch_kwargs must be a list of dicts, got {type(batch_kwargs).__name__}")
        if not batch_kwargs:
            return []
        items = []
        n_required = len(self.arg_names) - len(self.arg_defaults)
        for i, item in enumerate(batch_kwargs):
            if isinstance(item, dict):
                items.append(item)
            elif isinstance(item, (list, tuple)) and n_required <= len(item) <= len(self.arg_names):
                items.append(dict(zip(self.arg_names, item)))
            else:
                raise ValueError(f"batch_kwargs[{i}] does not match the signature of {self.__name__}{tuple(self.arg_names)}")
        params = _defaults(max_new_tokens, stop, stop_token_ids, temperature, top_p, top_k, min_p,
                           frequency_penalty, presence_penalty, ignore_eos, return_logprob, logprob_start_len,
                           top_logprobs_num, return_text_in_logprobs)
        return run_program_batch(self, backend, items, params, num_threads, progress_bar)

    def __call__(self, *args, **kwargs):
        return self.run(*args, **kwargs)

    def __repr__(self):
        return f"SglFunction({self.__name__})"
