"""StopChecker and FinishReason: stop tokens, split stop strings, hold-back, trimming."""

import pytest

from sgl.engine.sampling.sampling_params import SamplingParams
from sgl.engine.stop import FinishReason, StopChecker

EOS = 2
PIECES = {10: "Hel", 11: "lo wor", 12: "ld", 13: "!", 14: "o", 15: " ", 16: "w", 17: "x",
          EOS: "</s>", 30: "<|end|>"}


class ToyTok:
    """decode() of a few fixed pieces; special tokens are EOS and 30."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join("" if (skip_special_tokens and i in (EOS, 30)) else PIECES[i] for i in ids)


def stream(checker, ids, tok=ToyTok()):
    """Feed ids one at a time; return (reason, visible texts after each step, final text)."""
    out, seen = [], []
    reason = None
    for t in ids:
        out.append(t)
        text = tok.decode(out, skip_special_tokens=checker.params.skip_special_tokens)
        reason = checker.check(out, text)
        seen.append(checker.visible_text(text, reason is not None))
        if reason is not None:
            break
    return reason, seen


def params(**kw):
    return SamplingParams(**kw).normalize()


def test_finish_reason_dicts():
    assert FinishReason.stop(5).to_dict() == {"type": "stop", "matched": 5}
    assert FinishReason.stop("\n").to_dict() == {"type": "stop", "matched": "\n"}
    assert FinishReason.length_reached(7).to_dict() == {"type": "length", "length": 7}
    assert FinishReason.abort("bad").to_dict() == {"type": "abort", "message": "bad"}
    assert FinishReason.length_reached(7).openai_reason == "length"
    with pytest.raises(ValueError, match="type"):
        FinishReason("done")
    with pytest.raises(Exception):
        FinishReason.stop(1).type = "length"  # frozen


def test_stop_string_split_across_tokens_trimmed_and_held_back():
    c = StopChecker(params(stop="o w"), {EOS})
    reason, seen = stream(c, [10, 11, 12])
    assert reason == FinishReason.stop("o w")
    # "Hel" -> nothing held; "Hello wor" completes "o w" at once -> trimmed to "Hell"
    assert seen == ["Hel", "Hell"]


def test_partial_stop_string_held_back_then_released():
    c = StopChecker(params(stop=["o wx"]), {EOS})
    reason, seen = stream(c, [10, 14, 15, 16, 13, 12])
    assert reason is None
    # "Helo" holds "o"; "Helo " holds "o "; "Helo w" holds "o w"; "!" breaks the match
    assert seen == ["Hel", "Hel", "Hel", "Hel", "Helo w!", "Helo w!ld"]
    for a, b in zip(seen, seen[1:]):
        assert b.startswith(a)  # streamed text only grows


def test_stop_string_completed_token_by_token():
    c = StopChecker(params(stop=["o w"], no_stop_trim=False), {EOS})
    reason, seen = stream(c, [10, 14, 15, 16, 13])
    assert reason == FinishReason.stop("o w") and seen[-1] == "Hel"
    assert c.stop_str_pos == 3


def test_no_stop_trim_keeps_stop_string_and_drops_rest():
    c = StopChecker(params(stop="o w", no_stop_trim=True), {EOS})
    reason, seen = stream(c, [10, 11, 12])
    assert reason.matched == "o w" and seen[-1] == "Hello w"


def test_earliest_of_several_stop_strings():
    c = StopChecker(params(stop=["wor", "lo"]), {EOS})
    reason, seen = stream(c, [10, 11])
    assert reason.matched == "lo" and seen[-1] == "Hel"


def test_eos_and_stop_token_ids():
    c = StopChecker(params(), {EOS})
    reason, seen = stream(c, [10, EOS, 12])
    assert reason == FinishReason.stop(EOS) and seen[-1] == "Hel"
    c = StopChecker(params(stop_token_ids=[13]), {EOS})
    assert stream(c, [10, 13, 12])[0] == FinishReason.stop(13)


def test_ignore_eos_keeps_stop_token_ids():
    c = StopChecker(params(ignore_eos=True, stop_token_ids=[13]), {EOS})
    reason, _ = stream(c, [10, EOS, 12, 13])
    assert reason == FinishReason.stop(13)


def test_stop_token_text_trimmed_with_tokenizer_unless_no_stop_trim():
    c = StopChecker(params(skip_special_tokens=False, stop_token_ids=[30]), {EOS}, tokenizer=ToyTok())
    assert stream(c, [10, 30])[1][-1] == "Hel"
    c = StopChecker(params(skip_special_tokens=False, stop_token_ids=[30], no_stop_trim=True), {EOS},
                    tokenizer=ToyTok())
    assert stream(c, [10, 30])[1][-1] == "Hel<|end|>"


def test_max_new_tokens_length_and_zero():
    c = StopChecker(params(max_new_tokens=3), {EOS})
    reason, seen = stream(c, [10, 12, 13, 12])
    assert reason == FinishReason.length_reached(3) and seen[-1] == "Helld!"
    assert StopChecker(params(max_new_tokens=0), {EOS}).check([], "") == FinishReason.length_reached(0)


def test_stop_wins_over_length_on_the_last_token():
    c = StopChecker(params(max_new_tokens=2), {EOS})
    assert stream(c, [10, EOS])[0] == FinishReason.stop(EOS)


def test_min_new_tokens_suppresses_eos_stop_ids_and_stop_strings():
    c = StopChecker(params(min_new_tokens=4, stop_token_ids=[13], stop="Hel"), {EOS})
    reason, seen = stream(c, [10, EOS, 13, 12, EOS])
    # "Hel" completes at step 1, EOS at step 2, 13 at step 3 (all < min=4): ignored
    assert reason == FinishReason.stop(EOS)
    assert len(seen) == 5 and seen[-1] == "Hel!ld"
    c = StopChecker(params(min_new_tokens=3, stop_token_ids=[13]), {EOS})
    assert stream(c, [10, 13, 13])[0] == FinishReason.stop(13)  # 3rd token reaches min
    c = StopChecker(params(min_new_tokens=2, stop="ld"), {EOS})
    reason, seen = stream(c, [10, 12, 13])  # "ld" completes at step 2 == min -> stops
    assert reason == FinishReason.stop("ld") and seen[-1] == "Hel"


def test_reason_is_sticky():
    c = StopChecker(params(), {EOS})
    assert c.check([EOS], "") == FinishReason.stop(EOS)
    assert c.check([EOS, 10], "Hel") == FinishReason.stop(EOS)


def test_old_stop_string_occurrence_not_rematched_only_new():
    # "x" occurs while below min_new_tokens; later text must complete a new one
    c = StopChecker(params(min_new_tokens=2, stop=["x", "abc"]), {EOS})
    assert c.check([17], "x") is None
    assert c.check([17, 12], "xld") is None
    assert c.check([17, 12, 17], "xldx") == FinishReason.stop("x")
    assert c.visible_text("xldx", True) == "xld"


def test_stop_regex_split_across_tokens_and_trimmed():
    c = StopChecker(params(stop_regex=r"o\s+w"), {EOS})
    reason, seen = stream(c, [10, 11, 12])
    assert reason == FinishReason.stop(r"o\s+w") and seen[-1] == "Hell"
    c = StopChecker(params(stop_regex=[r"l+d"], no_stop_trim=True), {EOS})
    reason, seen = stream(c, [10, 11, 12, 13])
    assert reason.matched == r"l+d" and seen[-1] == "Hello world"


def test_stop_regex_only_new_matches_count():
    c = StopChecker(params(min_new_tokens=2, stop_regex=r"H\w"), {EOS})
    assert c.check([10], "Hel") is None  # match while below min_new_tokens: ignored
    assert c.check([10, 12], "Helld") is None  # same old match: not new
    assert c.check([10, 12, 10], "HelldHel") == FinishReason.stop(r"H\w")
    assert c.visible_text("HelldHel", True) == "Helld"
