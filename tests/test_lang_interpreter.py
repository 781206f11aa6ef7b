"""Pure-interpreter tests of the frontend language on a scripted fake Backend.

They check the interpreter's own logic (roles, messages, forks, streaming,
errors, parameter merging) without a model; the same behaviours are checked
on the bundled model through the engine backend in test_lang_engine.py.
"""

import asyncio
import threading
import time

import pytest

import sgl.lang as L
from sgl.backends.base import Backend, Prompt
from sgl.backends.chat_template import ChatTemplate
from sgl.lang.ir import SglRoleBegin

TEMPLATE = ChatTemplate(
    name="test",
    default_system_prompt="DEFAULT",
    role_prefix_and_suffix={
        "system": ("<s>", "</s>\n"),
        "user": ("<u>", "</u>\n"),
        "assistant": ("<a>", "</a>\n"),
    },
    stop_str=("</a>",),
)


class FakeBackend(Backend):
    """Answers gen with 'out<N>' (N = prompt length), streams it in 3 pieces,
    and selects the longest choice with made-up per-token logprobs."""

    def __init__(self, template=TEMPLATE, fail_on=None, delay=0.0):
        super().__init__(template)
        self.calls, self.commits, self.fail_on, self.delay = [], [], fail_on, delay
        self.lock = threading.Lock()

    def _answer(self, prompt: Prompt, params):
        with self.lock:
            self.calls.append((prompt, params))
        if self.fail_on is not None and self.fail_on in prompt.text:
            raise ValueError(f"backend refused prompt containing {self.fail_on!r}")
        time.sleep(self.delay)
        return f"out{len(prompt.text)}"

    def generate(self, prompt, sampling_params):
        text = self._answer(prompt, sampling_params)
        return text, {"prompt_tokens": len(prompt.text), "completion_tokens": 1}

    def generate_stream(self, prompt, sampling_params):
        text = self._answer(prompt, sampling_params)
        for i in range(0, len(text), 2):
            time.sleep(self.delay)
            yield text[i:i + 2], {"completion_tokens": i}

    def select(self, prompt, choices, temperature, choices_method):
        with self.lock:
            self.calls.append((prompt, ("select", tuple(choices), temperature, choices_method)))
        logprobs = [[(-1.0 / (len(c) + j), j, None) for j in range(len(c))] for c in choices]
        norm = [sum(x[0] for x in lp) / len(lp) for lp in logprobs]
        return choices_method(choices=choices, normalized_prompt_logprobs=norm, input_token_logprobs=logprobs,
                              output_token_logprobs=[[] for _ in choices], unconditional_token_logprobs=logprobs)

    def commit_lazy_operations(self, prompt):
        self.commits.append(prompt.text)


@L.function
def qa(s, question):
    s += L.system("Be brief.")
    s += L.user(question)
    s += L.assistant(L.gen("answer", max_tokens=7))


def test_roles_text_and_messages():
    be = FakeBackend()
    state = qa.run(question="Why?", backend=be, temperature=0.5)
    prefix = "<s>Be brief.</s>\n<u>Why?</u>\n<a>"
    assert state["answer"] == f"out{len(prefix)}"
    assert state.text() == prefix + state["answer"] + "</a>\n"
    assert state.messages() == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Why?"},
        {"role": "assistant", "content": state["answer"]},
    ]
    prompt, params = be.calls[0]
    assert prompt.text == prefix and prompt.cur_role == "assistant" and prompt.cur_role_text == ""
    assert params.max_new_tokens == 7 and params.temperature == 0.5
    assert params.stop == ["</a>"]  # the template's stop string is added
    assert state.get_meta_info("answer") == {"prompt_tokens": len(prefix), "completion_tokens": 1}


def test_default_system_prompt_and_role_forms():
    @L.function
    def prog(s):
        with s.user():
            s += "Q1"
        s += L.assistant_begin()
        s += "A: " + L.gen("a1", max_tokens=3)
        s += L.assistant_end()
        s += s.user("Q2")  # submits once although appended with +=
        s += L.user_begin() + "Q3" + L.user_end()

    state = prog.run(backend=FakeBackend())
    roles = [m["role"] for m in state.messages()]
    assert roles == ["system", "user", "assistant", "user", "user"]
    assert state.messages()[0]["content"] == "DEFAULT"
    assert state.messages()[2]["content"] == "A: " + state["a1"]
    assert [m["content"] for m in state.messages()[3:]] == ["Q2", "Q3"]


def test_nested_unknown_and_unmatched_roles_raise():
    @L.function
    def nested(s):
        s += L.user_begin()
        s += L.assistant_begin()

    with pytest.raises(ValueError, match="nested roles"):
        nested.run(backend=FakeBackend())

    @L.function
    def unknown(s):
        s += SglRoleBegin("tool")

    with pytest.raises(ValueError, match="unknown role 'tool'.*known roles"):
        unknown.run(backend=FakeBackend())

    @L.function
    def unmatched(s):
        s += L.user_begin() + "x" + L.assistant_end()

    with pytest.raises(ValueError, match="assistant_end"):
        unmatched.run(backend=FakeBackend())


def test_program_and_backend_exceptions_propagate():
    @L.function
    def boom(s):
        s += "hi"
        raise KeyError("user bug")

    with pytest.raises(KeyError, match="user bug"):
        boom.run(backend=FakeBackend())

    with pytest.raises(ValueError, match="backend refused"):
        qa.run(question="FAIL", backend=FakeBackend(fail_on="FAIL"))


def test_run_batch_matches_sequential_and_reports_errors_per_item():
    be = FakeBackend(fail_on="bad", delay=0.01)
    qs = ["a?", "bad", "ccc?"]
    with pytest.warns(RuntimeWarning, match="program 1 failed: ValueError"):
        states = qa.run_batch([{"question": q} for q in qs], backend=be, num_threads=3)
    seq = [qa.run(question=q, backend=FakeBackend()) for q in ("a?", "ccc?")]
    assert [states[0]["answer"], states[2]["answer"]] == [s["answer"] for s in seq]
    assert states[0].error() is None and isinstance(states[1].error(), ValueError)
    with pytest.raises(RuntimeError, match="not produced because the program failed"):
        states[1]["answer"]
    # positional tuples work too
    assert qa.run_batch([("a?",)], backend=FakeBackend(), progress_bar=False)[0]["answer"] == states[0]["answer"]


def test_fork_shares_text_commits_prefix_and_joins():
    be = FakeBackend()

    @L.function
    def prog(s):
        s += "Base. "
        forks = s.fork(2)
        for i, f in enumerate(forks):
            f += f"Tip {i}: " + L.gen("tip", max_tokens=4)
        s += "T0=" + forks[0]["tip"] + " T1=" + forks[1]["tip"]
        forks.join()
        return s

    state = prog.run(backend=be)
    assert be.commits == ["Base. "]
    tips = sorted(p.text for p, _ in be.calls)
    assert tips == ["Base. Tip 0: ", "Base. Tip 1: "]
    assert state["tip"] == [f"out{len('Base. Tip 0: ')}", f"out{len('Base. Tip 1: ')}"]
    assert state.ret_value is state

    @L.function
    def concat(s):
        s += "P|"
        forks = s.fork(2)
        forks += lambda i: f"f{i}|"
        forks.join("concate_and_append")

    assert concat.run(backend=FakeBackend()).text() == "P|f0|f1|"


def test_streaming_pieces_equal_final_text():
    be = FakeBackend(delay=0.01)
    state = qa.run(question="Stream?", backend=be, stream=True)
    pieces = list(state.text_iter())
    assert len(pieces) > 1 and "".join(pieces) == state.text()

    state = qa.run(question="Stream?", backend=FakeBackend(delay=0.01), stream=True)
    var_pieces = list(state.text_iter("answer"))
    assert len(var_pieces) >= 2 and "".join(var_pieces) == state["answer"]

    async def collect():
        st = qa.run(question="Stream?", backend=FakeBackend(), stream=True)
        return [p async for p in st.text_async_iter("answer")], st

    apieces, st = asyncio.run(collect())
    assert "".join(apieces) == st["answer"]


def test_stream_error_surfaces_in_text_iter():
    state = qa.run(question="FAIL", backend=FakeBackend(fail_on="FAIL"), stream=True)
    with pytest.raises(ValueError, match="backend refused"):
        list(state.text_iter())
    assert isinstance(state.error(), ValueError)


def test_gen_with_choices_is_select():
    be = FakeBackend()

    @L.function
    def prog(s):
        s += "Use a " + L.gen("tool", choices=["calculator", "search engine"]) + "."

    state = prog.run(backend=be)
    _, (kind, choices, temperature, method) = be.calls[0]
    assert kind == "select" and temperature == 0.0 and method is L.token_length_normalized
    # fake scores: mean of -1/(len+j) is highest for the longer choice
    assert state["tool"] == "search engine"
    assert state.text() == "Use a search engine."
    meta = state.get_meta_info("tool")
    assert meta["normalized_prompt_logprobs"][1] == max(meta["normalized_prompt_logprobs"])


def test_same_variable_twice_reads_the_last():
    @L.function
    def prog(s):
        s += L.gen("x", max_tokens=1)
        s += " and "
        s += L.gen("x", max_tokens=1)

    state = prog.run(backend=FakeBackend())
    first = "out0"
    assert state["x"] == f"out{len(first + ' and ')}"


def test_var_scope_and_image_error():
    @L.function
    def prog(s):
        s += "a"
        with s.var_scope("v"):
            s += "bc" + L.gen(max_tokens=1)
        s += "d"

    st = prog.run(backend=FakeBackend())
    assert st["v"] == "bcout3"

    @L.function
    def img(s):
        s += L.user(L.image(b"\x89PNG\r\n\x1a\n") + "What is this?")

    with pytest.raises(ValueError, match="text-only"):
        img.run(backend=FakeBackend())


def test_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match="first argument must be named 's'"):
        L.function(lambda state: None)
    with pytest.raises(ValueError, match="invalid regular expression"):
        L.gen("x", regex="(")
    with pytest.raises(ValueError, match="choices_method"):
        L.select("x", choices=["a"], choices_method="nope")
    with pytest.raises(ValueError, match="non-empty"):
        L.select("x", choices=[])
    with pytest.raises(ValueError, match="num_threads"):
        qa.run_batch([{"question": "q"}], backend=FakeBackend(), num_threads=0)
    with pytest.raises(TypeError, match="expected a Backend"):
        qa.run(question="q", backend=object())


def test_worker_threads_exit_and_finished_state_is_closed():
    before = set(threading.enumerate())  # threads of earlier tests may still be winding down

    @L.function
    def prog(s):
        s += "x" + L.gen("a", max_tokens=1)
        forks = s.fork(3)
        forks += L.gen("b", max_tokens=1)
        forks.join()

    states = prog.run_batch([{}] * 4, backend=FakeBackend(), num_threads=2)
    assert [len(st["b"]) for st in states] == [3, 3, 3, 3]
    deadline = time.time() + 5
    new_threads = lambda: [t for t in threading.enumerate() if t not in before]  # noqa: E731
    while new_threads() and time.time() < deadline:
        time.sleep(0.01)
    assert new_threads() == []
    with pytest.raises(RuntimeError, match="has finished"):
        states[0] += "more"


def test_resolve_chat_template_argument():
    from sgl.backends.chat_template import get_chat_template, resolve_chat_template

    mine = get_chat_template("chatml")
    model = get_chat_template("default")
    assert resolve_chat_template(mine, lambda: model) is mine
    assert resolve_chat_template("chatml", lambda: model) is mine
    assert resolve_chat_template(None, lambda: model) is model
    with pytest.raises(ValueError, match="unknown chat template 'nope'"):
        resolve_chat_template("nope", lambda: model)
    with pytest.raises(ValueError, match="got int"):
        resolve_chat_template(3, lambda: model)
