"""A failing program never leaves a reader waiting (issue 18).

A program raises at each point -- before its first gen, after it, inside a
fork branch, inside a role block -- or a model call fails, and the program is
run with ``run``, ``run_batch`` and ``run(stream=True)``.  Every read of the
failed state raises (``ProgramError`` chained to the program's exception for
value reads, the exception itself from ``text_iter``) and nothing hangs: each
read runs in a thread joined with a timeout, so a regression fails instead of
blocking the suite.

The fake backend needs no model; one ``slow`` test repeats the batch case on
the bundled model through the engine backend.
"""

import threading
import time

import pytest

import sgl.lang as L
from sgl.backends.base import Backend
from sgl.backends.chat_template import ChatTemplate
from sgl.lang import ProgramError
from sgl.lang.interpreter import StreamExecutor
from sgl.lang.ir import SglSamplingParams

TIMEOUT = 10.0

TEMPLATE = ChatTemplate(
    name="test-failures",
    default_system_prompt=None,
    role_prefix_and_suffix={
        "system": ("<s>", "</s>\n"),
        "user": ("<u>", "</u>\n"),
        "assistant": ("<a>", "</a>\n"),
    },
    stop_str=("</a>",),
)


class Boom(Exception):
    """The program's own exception."""


class FakeBackend(Backend):
    """Answers 'out<N>' (N = prompt length), streamed in 2-character pieces.

    ``fail_on``: raise ValueError for a prompt containing it.
    ``gate``: an Event every gen waits for (to hold a gen in flight).
    """

    def __init__(self, fail_on=None, delay=0.0, gate=None):
        super().__init__(TEMPLATE)
        self.fail_on, self.delay, self.gate = fail_on, delay, gate
        self.started = threading.Event()

    def _answer(self, prompt):
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(TIMEOUT), "test gate never opened"
        if self.fail_on is not None and self.fail_on in prompt.text:
            raise ValueError(f"backend refused prompt containing {self.fail_on!r}")
        time.sleep(self.delay)
        return f"out{len(prompt.text)}"

    def generate(self, prompt, sampling_params):
        return self._answer(prompt), {"completion_tokens": 1}

    def generate_stream(self, prompt, sampling_params):
        text = self._answer(prompt)
        for i in range(0, len(text), 2):
            time.sleep(self.delay)
            yield text[i:i + 2], {"completion_tokens": i}

    def select(self, prompt, choices, temperature, choices_method):
        raise NotImplementedError("not used by these tests")

    def commit_lazy_operations(self, prompt):
        pass


def within(fn, timeout=TIMEOUT):
    """Run ``fn()`` in a thread; return ("ok", value) or ("raised", exc).  Fails if it hangs."""
    box = {}

    def target():
        try:
            box["ok"] = fn()
        except BaseException as e:
            box["raised"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"{getattr(fn, '__name__', fn)} did not return within {timeout}s (hang)"
    return ("ok", box["ok"]) if "ok" in box else ("raised", box["raised"])


def assert_raises_within(fn, exc_type, match=None, timeout=TIMEOUT):
    kind, value = within(fn, timeout)
    assert kind == "raised", f"expected {exc_type.__name__}, got the value {value!r}"
    assert isinstance(value, exc_type), f"expected {exc_type.__name__}, got {type(value).__name__}: {value}"
    if match is not None:
        assert match in str(value), f"{match!r} not in {value!r}"
    return value


# -- programs that raise at each point ------------------------------------------------

@L.function
def before_gen(s, q):
    s += "Q: " + q + "\n"
    if q == "bad":
        raise Boom("before the first gen")
    s += "A: " + L.gen("x", max_tokens=4)


@L.function
def after_gen(s, q):
    s += "Q: " + q + "\nA: " + L.gen("x", max_tokens=4)
    if q == "bad":
        raise Boom("after a gen")
    s += "\nMore: " + L.gen("y", max_tokens=4)


@L.function
def in_fork(s, q):
    s += "Q: " + q + "\n"
    forks = s.fork(2)
    for i, f in enumerate(forks):
        f += f"Branch {i}: " + L.gen("x", max_tokens=4)
        if q == "bad" and i == 1:
            raise Boom("inside a fork branch")
    forks.join()


@L.function
def in_role_scope(s, q):
    with s.user():
        s += q
        if q == "bad":
            raise Boom("inside a with-role block")
    s += L.assistant(L.gen("x", max_tokens=4))


@L.function
def in_role_after_gen(s, q):
    s += L.user(q)
    with s.assistant():
        s += L.gen("x", max_tokens=4)
        if q == "bad":
            raise Boom("inside an assistant block, after its gen")


@L.function
def in_role_expr(s, q):
    def content():
        if q == "bad":
            raise Boom("building an s += sgl.user(...) expression")
        return q

    s += L.system("sys")
    s += L.user(content()) + L.assistant(L.gen("x", max_tokens=4))


BODY_FAILURES = [before_gen, after_gen, in_fork, in_role_scope, in_role_after_gen, in_role_expr]
IDS = [p.__name__ for p in BODY_FAILURES]


def assert_failed_state(state, cause_type=Boom, iter_type=None):
    """Every read of a failed state raises promptly; error() returns the cause."""
    iter_type = iter_type or cause_type
    for name in ("x", "y", "never_submitted"):
        e = assert_raises_within(lambda n=name: state[n], ProgramError, "because the program failed")
        assert isinstance(e.__cause__, cause_type) and e.error is e.__cause__
        assert isinstance(e, RuntimeError)
    assert_raises_within(lambda: state.get_var("x"), ProgramError)
    assert_raises_within(lambda: state.get_meta_info("x"), ProgramError)
    assert_raises_within(state.text, ProgramError, "text()")
    assert_raises_within(state.messages, ProgramError, "messages()")
    assert_raises_within(state.sync, ProgramError)
    assert_raises_within(lambda: state.fork(2), ProgramError)
    assert_raises_within(lambda: list(state.text_iter()), iter_type)
    assert_raises_within(lambda: list(state.text_iter("x")), iter_type)
    kind, err = within(state.error)
    assert kind == "ok" and isinstance(err, cause_type)
    kind, r = within(lambda: repr(state))
    assert kind == "ok" and "failed" in r  # repr never raises


# -- run() --------------------------------------------------------------------------

@pytest.mark.parametrize("prog", BODY_FAILURES, ids=IDS)
def test_run_raises_the_program_exception(prog):
    assert_raises_within(lambda: prog.run(q="bad", backend=FakeBackend()), Boom)
    kind, state = within(lambda: prog.run(q="fine", backend=FakeBackend()))
    assert kind == "ok" and state.error() is None and state.text()


def test_run_reads_after_a_failed_gen_raise_inside_the_body():
    """A model call fails; the body goes on appending and reads: the reads raise
    at once (the later gen is skipped, so waiting for it would be forever)."""
    seen = {}

    @L.function
    def prog(s):
        s += "FAIL " + L.gen("x", max_tokens=4)
        s += " then " + L.gen("y", max_tokens=4)
        for name in ("y", "x"):
            try:
                s[name]
            except ProgramError as e:
                seen[name] = e
        s += "end"

    assert_raises_within(lambda: prog.run(backend=FakeBackend(fail_on="FAIL")), ValueError, "backend refused")
    assert set(seen) == {"x", "y"}
    assert all(isinstance(e.__cause__, ValueError) for e in seen.values())
    assert "was not produced" in str(seen["y"]) and "'prog'" in str(seen["y"])


def test_run_fork_failure_reaches_the_parent():
    @L.function
    def prog(s):
        s += "P "
        forks = s.fork(2)
        forks += lambda i: ("FAIL " if i == 1 else "ok ") + L.gen("x", max_tokens=4)
        forks.join()

    e = assert_raises_within(lambda: prog.run(backend=FakeBackend(fail_on="FAIL")), ProgramError, "fork 1")
    assert isinstance(e.__cause__, ValueError)

    @L.function
    def concat(s):
        s += "P "
        forks = s.fork(2)
        forks += lambda i: ("FAIL " if i == 0 else "ok ") + L.gen("x", max_tokens=4)
        forks.join("concate_and_append")

    e = assert_raises_within(lambda: concat.run(backend=FakeBackend(fail_on="FAIL")), ProgramError, "fork 0")
    assert isinstance(e.__cause__, ValueError)


# -- run_batch() ------------------------------------------------------------------------

@pytest.mark.parametrize("prog", BODY_FAILURES, ids=IDS)
def test_run_batch_failed_item_reads_raise_others_finish(prog):
    be = FakeBackend(delay=0.005)
    with pytest.warns(RuntimeWarning, match="program 1 failed: Boom"):
        kind, states = within(lambda: prog.run_batch([{"q": "a"}, {"q": "bad"}, {"q": "c"}], backend=be,
                                                     num_threads=3))
    assert kind == "ok", states
    for i in (0, 2):
        assert states[i].error() is None
        assert within(lambda i=i: states[i].text())[0] == "ok"
    assert_failed_state(states[1])


def test_run_batch_backend_failure_reads_raise():
    be = FakeBackend(fail_on="FAIL")
    with pytest.warns(RuntimeWarning, match="program 1 failed: ValueError"):
        states = after_gen.run_batch([{"q": "a"}, {"q": "FAIL"}], backend=be, num_threads=2)
    assert states[0]["y"]
    assert_failed_state(states[1], cause_type=ValueError)


def test_run_batch_sequential_failure():
    with pytest.warns(RuntimeWarning, match="program 0 failed"):
        states = after_gen.run_batch([{"q": "bad"}, {"q": "b"}], backend=FakeBackend(), num_threads=1)
    assert_failed_state(states[0])
    assert states[1]["y"]


# -- run(stream=True) ----------------------------------------------------------------

@pytest.mark.parametrize("prog", BODY_FAILURES, ids=IDS)
def test_stream_failed_reads_raise(prog):
    state = prog.run(q="bad", backend=FakeBackend(delay=0.002), stream=True)
    # Let the body reach its raise first: while it runs, a variable it has not yet
    # appended is unknown (KeyError), as in SGLang.  text_iter ends at the failure.
    assert_raises_within(lambda: list(state.text_iter()), Boom)
    assert_failed_state(state)


@pytest.mark.parametrize("prog", BODY_FAILURES, ids=IDS)
def test_stream_text_iter_yields_then_raises(prog):
    state = prog.run(q="bad", backend=FakeBackend(delay=0.002), stream=True)
    pieces = []

    def consume():
        for p in state.text_iter():
            pieces.append(p)

    assert_raises_within(consume, Boom)
    joined = "".join(pieces)  # what was produced before the failure (may be nothing: the body raced ahead)
    assert state.stream_executor.text_.startswith(joined)


def test_stream_backend_failure_mid_stream():
    state = after_gen.run(q="FAIL", backend=FakeBackend(fail_on="FAIL", delay=0.002), stream=True)
    assert_raises_within(lambda: list(state.text_iter("x")), ValueError, "backend refused")
    assert_failed_state(state, cause_type=ValueError)


def test_async_text_iter_raises():
    import asyncio

    state = after_gen.run(q="bad", backend=FakeBackend(delay=0.002), stream=True)

    async def collect():
        return [p async for p in state.text_async_iter()]

    assert_raises_within(lambda: asyncio.run(collect()), Boom)


# -- readers already waiting are woken ------------------------------------------------

@pytest.mark.parametrize("read", ["var", "meta", "text", "messages", "sync", "text_iter", "text_iter_var"])
def test_waiting_reader_is_woken_by_a_body_failure(read):
    """The reader waits on a gen that is still in flight; the body then raises.
    The reader must wake with the error at once, not when (if) the gen ends."""
    gate = threading.Event()
    raise_now = threading.Event()
    be = FakeBackend(gate=gate)

    @L.function
    def prog(s):
        s += "Q " + L.gen("x", max_tokens=4)
        assert raise_now.wait(TIMEOUT)
        raise Boom("after the gen, while it is in flight")

    state = prog.run(backend=be, stream=True)
    assert be.started.wait(TIMEOUT)
    readers = {
        "var": lambda: state["x"], "meta": lambda: state.get_meta_info("x"), "text": state.text,
        "messages": state.messages, "sync": state.sync, "text_iter": lambda: list(state.text_iter()),
        "text_iter_var": lambda: list(state.text_iter("x")),
    }
    box = {}

    def reader():
        try:
            box["value"] = readers[read]()
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    time.sleep(0.1)
    assert t.is_alive(), "the reader should be waiting for the gen"
    raise_now.set()
    t.join(TIMEOUT)
    try:
        assert not t.is_alive(), f"reader {read!r} was not woken by the failure"
        err = box.get("error")
        assert isinstance(err, Boom if read.startswith("text_iter") else ProgramError), box
    finally:
        gate.set()  # let the held gen finish
    assert isinstance(within(state.error)[1], Boom)


def test_waiting_reader_is_woken_by_a_backend_failure():
    gate = threading.Event()
    be = FakeBackend(fail_on="FAIL", gate=gate)

    @L.function
    def prog(s):
        s += "FAIL " + L.gen("x", max_tokens=4)

    state = prog.run(backend=be, stream=True)
    assert be.started.wait(TIMEOUT)
    box = {}

    def reader():
        try:
            state["x"]
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    time.sleep(0.05)
    gate.set()
    t.join(TIMEOUT)
    assert not t.is_alive() and isinstance(box.get("error"), ProgramError)
    assert isinstance(box["error"].__cause__, ValueError)


def test_forks_of_a_failed_program_fail_too():
    holder = {}

    @L.function
    def prog(s):
        s += "P "
        forks = s.fork(2)
        holder["forks"] = forks
        forks += L.gen("x", max_tokens=4)
        raise Boom("after the forks' gens")

    assert_raises_within(lambda: prog.run(backend=FakeBackend(delay=0.01)), Boom)
    for f in holder["forks"]:
        e = assert_raises_within(lambda f=f: f["x"], ProgramError, "fork")
        assert isinstance(e.__cause__, Boom)
        assert_raises_within(f.text, ProgramError)


def test_dead_interpreter_thread_fails_readers(monkeypatch):
    """If the worker thread dies with work queued, readers fail instead of waiting."""
    monkeypatch.setattr(StreamExecutor, "_worker_loop", lambda self: None)  # the thread exits at once
    exe = StreamExecutor(FakeBackend(), {}, SglSamplingParams(), name="dead")
    exe.submit(L.gen("x", max_tokens=2))
    e = assert_raises_within(lambda: exe.get_var("x"), ProgramError, "interpreter thread")
    assert "'dead'" in str(e)
    assert_raises_within(exe.text, ProgramError)
    assert within(exe.error)[0] == "ok"


def test_successful_programs_are_unchanged():
    for prog in BODY_FAILURES:
        state = prog.run(q="fine", backend=FakeBackend())
        assert state.error() is None and "out" in str(state["x"])
        assert "ProgramState(" in repr(state) and "failed" not in repr(state)
    state = after_gen.run(q="fine", backend=FakeBackend(delay=0.002), stream=True)
    assert "".join(within(lambda: list(state.text_iter()))[1]) == state.text()
    # a second iterator after the end returns at once with the whole text
    assert "".join(within(lambda: list(state.text_iter()))[1]) == state.text()
    assert "".join(within(lambda: list(state.text_iter("y")))[1]) == state["y"]


# -- the same on the bundled model ---------------------------------------------------

@pytest.mark.slow
def test_engine_run_batch_failed_item_reads_raise(engine):
    from sgl.backends.engine_backend import EngineBackend

    backend = EngineBackend(engine=engine)

    @L.function
    def prog(s, q):
        s += L.user(q)
        s += L.assistant(L.gen("x", max_tokens=4))
        if q == "bad":
            raise Boom("after a gen on the engine")

    with pytest.warns(RuntimeWarning, match="program 1 failed: Boom"):
        kind, states = within(lambda: prog.run_batch([{"q": "Hi"}, {"q": "bad"}, {"q": "Bye"}], backend=backend,
                                                     temperature=0.0, num_threads=3), timeout=120)
    assert kind == "ok"
    assert states[0]["x"] is not None and states[2]["x"] is not None
    assert_failed_state(states[1])
    state = prog.run(q="bad", backend=backend, temperature=0.0, stream=True)
    assert_raises_within(lambda: list(state.text_iter("x")), Boom, timeout=120)
    assert_raises_within(lambda: state["x"], ProgramError, timeout=120)
