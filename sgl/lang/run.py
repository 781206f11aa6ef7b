"""Running programs: one at a time (optionally streaming) or a batch on a thread pool.

What a failing program does (its body raises, or a model call fails):

* ``run()`` raises the program's exception once the program has stopped
  (as SGLang does for the body's exceptions); nothing is left waiting.
* ``run(stream=True)`` returns the state at once; the failure surfaces on
  the state: ``text_iter()`` raises the exception after the pieces produced
  before it, every value read raises ``ProgramError`` chained to it, and
  ``error()`` returns it.
* ``run_batch()`` returns every state; the other programs finish normally,
  the failed one's ``error()`` holds the exception and every read of it
  raises ``ProgramError``; a ``RuntimeWarning`` names each failed item.
"""

from __future__ import annotations

import multiprocessing
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Sequence, Union

from sgl.lang.global_config import resolve_backend
from sgl.lang.interpreter import ProgramError, StreamExecutor
from sgl.lang.ir import SglSamplingParams
from sgl.lang.state import ProgramState


def _run_body(state: ProgramState, program, args: Sequence, kwargs: Dict[str, Any]) -> None:
    exe = state.stream_executor
    try:
        state.ret_value = program.func(state, *args, **kwargs)
    except BaseException as e:
        exe.fail(e)  # wakes every reader (keeps an earlier error from the worker)
        raise
    finally:
        exe.end()


def _name(program) -> str:
    return getattr(program, "__name__", "program")


def _start(program, backend, args, kwargs, default_params: SglSamplingParams, stream: bool) -> ProgramState:
    backend = resolve_backend(backend)
    kwargs = {**program.bind_arguments, **kwargs}
    state = ProgramState(StreamExecutor(backend, kwargs, default_params, stream=stream, name=_name(program)))
    if stream:
        def target():
            try:
                _run_body(state, program, args, kwargs)
            except BaseException:
                pass  # recorded in state.error(); raised by text_iter()

        threading.Thread(target=target, name="sgl-program", daemon=True).start()
    else:
        exe = state.stream_executor
        own_failure = None
        try:
            _run_body(state, program, args, kwargs)
        except ProgramError as e:
            if e.error is None or e.error is not exe.error_:
                raise
            # A read in the body raised because the program had already failed (a model
            # call, a fork): run() raises that failure itself, not the read's wrapper.
            own_failure = exe.error_
        if own_failure is not None:
            raise own_failure
        exe.drain()
    return state


def run_program(program, backend, args, kwargs, default_params: SglSamplingParams, stream: bool) -> ProgramState:
    """Run ``program`` once and return its state.

    Without ``stream`` the call returns when the program has finished and
    raises the program's exception, whether it came from the program body or
    from a model call (when a read in the body raised ``ProgramError``
    because a model call had failed, the model call's exception is raised).
    With ``stream`` the body runs in a background thread and the state is
    returned at once; errors surface through ``state.error()``,
    ``state.text_iter()`` (the exception itself) and every other read
    (``ProgramError`` chained to it).
    """
    state = _start(program, backend, args, kwargs, default_params, stream)
    if not stream and state.stream_executor.error_ is not None:
        raise state.stream_executor.error_
    return state


def run_program_batch(program, backend, batch_kwargs: List[Dict[str, Any]], default_params: SglSamplingParams,
                      num_threads: Union[str, int] = "auto", progress_bar: bool = False) -> List[ProgramState]:
    """Run ``program`` once per kwargs dict, concurrently on a thread pool.

    Args:
        num_threads: ``"auto"`` (SGLang's rule: max(96, 16 x CPUs), capped at
            the batch size) or a positive int; 1 runs sequentially.
        progress_bar: show a tqdm bar advancing as programs finish.

    Returns:
        The states in input order.  A program that fails does not stop the
        batch: its state's ``error()`` holds the exception, every read of it
        (variables, text, messages) raises ``ProgramError`` chained to that
        exception, and a warning names the item.
    """
    backend = resolve_backend(backend)
    if num_threads == "auto":
        num_threads = max(96, multiprocessing.cpu_count() * 16)
    if not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"num_threads must be 'auto' or a positive int, got {num_threads!r}")
    num_threads = min(num_threads, max(1, len(batch_kwargs)))

    pbar = None
    if progress_bar:
        import tqdm

        pbar = tqdm.tqdm(total=len(batch_kwargs))

    def one(kwargs):
        kwargs = {**program.bind_arguments, **kwargs}
        state = ProgramState(StreamExecutor(backend, kwargs, default_params, stream=False, name=_name(program)))
        try:
            _run_body(state, program, (), kwargs)
        except KeyboardInterrupt:
            raise
        except BaseException:
            pass  # recorded in state.error_; reads of this state raise ProgramError
        state.stream_executor.drain()
        if pbar is not None:
            pbar.update(1)
        return state

    try:
        if num_threads == 1:
            states = [one(kw) for kw in batch_kwargs]
        else:
            with ThreadPoolExecutor(num_threads, thread_name_prefix="sgl-batch") as pool:
                states = list(pool.map(one, batch_kwargs))
    finally:
        if pbar is not None:
            pbar.close()
    for i, s in enumerate(states):
        err = s.stream_executor.error_
        if err is not None:
            warnings.warn(f"run_batch: program {i} failed: {type(err).__name__}: {err}", RuntimeWarning, stacklevel=3)
    return states
