"""Running programs: one at a time (optionally streaming) or a batch on a thread pool."""

from __future__ import annotations

import multiprocessing
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Sequence, Union

from sgl.lang.global_config import resolve_backend
from sgl.lang.interpreter import StreamExecutor
from sgl.lang.ir import SglSamplingParams
from sgl.lang.state import ProgramState


def _run_body(state: ProgramState, program, args: Sequence, kwargs: Dict[str, Any]) -> None:
    exe = state.stream_executor
    try:
        state.ret_value = program.func(state, *args, **kwargs)
    except BaseException as e:
        if exe.error_ is None:
            exe.error_ = e
        raise
    finally:
        exe.end()


def _start(program, backend, args, kwargs, default_params: SglSamplingParams, stream: bool) -> ProgramState:
    backend = resolve_backend(backend)
    kwargs = {**program.bind_arguments, **kwargs}
    state = ProgramState(StreamExecutor(backend, kwargs, default_params, stream=stream))
    if stream:
        def target():
            try:
                _run_body(state, program, args, kwargs)
            except BaseException:
                pass  # recorded in state.error(); raised by text_iter()

        threading.Thread(target=target, name="sgl-program", daemon=True).start()
    else:
        _run_body(state, program, args, kwargs)
        state.stream_executor.sync()
    return state


def run_program(program, backend, args, kwargs, default_params: SglSamplingParams, stream: bool) -> ProgramState:
    """Run ``program`` once and return its state.

    Without ``stream`` the call returns when the program has finished and
    raises the program's exception, whether it came from the program body or
    from a model call.  With ``stream`` the body runs in a background thread
    and the state is returned at once; errors surface through
    ``state.error()`` and ``state.text_iter()``.
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
        batch: its state's ``error()`` holds the exception, reading its
        missing variables raises, and a warning names the item.
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
        state = ProgramState(StreamExecutor(backend, kwargs, default_params, stream=False))
        try:
            _run_body(state, program, (), kwargs)
        except BaseException:
            pass  # recorded in state.error_
        state.stream_executor.sync()
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
