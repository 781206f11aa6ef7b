"""Stop conditions over text appended by jump-forward, and the ``Prefill batch.`` log line of a
jump-forward extend, through the engine on the bundled model."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.slow

# From the start state the grammar forces "Answer: " before the model picks anything.
FORCED_FIRST = r"Answer: (yes|no)\. The reply is final\."


def _chat(engine, q):
    return engine.tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                add_generation_prompt=True)


@pytest.mark.parametrize("stop, text", [("swer", "An"), ("Answer", ""), (": ", "Answer")])
def test_stop_string_inside_start_state_forced_text(engine, stop, text):
    """Text forced from the grammar's start state is checked against stop strings: the request
    stops at the stop string before any model step (before the fix the whole match came back)."""
    steps = engine.get_server_info()["stats"]
    out = engine.generate(_chat(engine, "Is the sky blue?"),
                          {"regex": FORCED_FIRST, "stop": stop, "temperature": 0, "max_new_tokens": 32})
    assert out["text"] == text
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    after = engine.get_server_info()["stats"]
    assert (after["prefill_steps"], after["decode_steps"]) == (steps["prefill_steps"], steps["decode_steps"])


def test_stop_string_inside_mid_output_forced_text(engine):
    """After the model picks yes/no, ". The reply is final." is forced in one jump; a stop string
    inside it cuts the text there."""
    out = engine.generate(_chat(engine, "Is the sky blue?"),
                          {"regex": FORCED_FIRST, "stop": "reply", "temperature": 0, "max_new_tokens": 32})
    assert out["text"] in ("Answer: yes. The ", "Answer: no. The ")
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": "reply"}


def test_jump_forward_extend_logs_its_reused_kv_as_cached_tokens(engine, caplog):
    """The extend that feeds a jump-forward's forced tokens reuses the request's KV (prompt and
    decoded tokens); the log line reports it (it printed ``#cached-token: 0``)."""
    engine.flush_cache()
    prompt = _chat(engine, "Is the grass green?")
    n_prompt = len(engine.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    pattern = FORCED_FIRST + " (Sure|Maybe)!"  # the model picks again after the forced run
    with caplog.at_level("INFO", logger="sgl"):
        out = engine.generate(prompt, {"regex": pattern, "temperature": 0, "max_new_tokens": 32})
    assert re.fullmatch(pattern, out["text"])
    lines = [(int(m[1]), int(m[2]), int(m[3])) for m in
             re.finditer(r"Prefill batch\. #new-seq: (\d+), #new-token: (\d+), #cached-token: (\d+)", caplog.text)]
    # first: the prompt plus "Answer: " (nothing cached after the flush); then the jump's extend
    assert len(lines) >= 2 and lines[0][0] == 1 and lines[0][2] == 0
    first_new = lines[0][1]
    assert first_new > n_prompt
    jump = lines[1]
    assert jump[0] == 1 and jump[2] >= first_new and jump[1] >= 1
