"""The three choices methods on hand-made logprobs (values checked by hand)."""

import math

import pytest

from sgl.backends.choices import (
    get_choices_method,
    greedy_token_selection,
    normalized_logprob,
    token_length_normalized,
    unconditional_likelihood_normalized,
)

CHOICES = ["ab", "abc", "x"]
# per-choice (logprob, token_id, text) triples
INPUT = [
    [(-1.0, 1, "a"), (-1.0, 2, "b")],
    [(-1.0, 1, "a"), (-0.5, 3, "bc"), (-2.0, 4, "c")],
    [(-1.2, 5, "x")],
]
UNCOND = [
    [(None, 1, "a"), (-3.0, 2, "b")],
    [(None, 1, "a"), (-0.5, 3, "bc"), (-0.5, 4, "c")],
    [(None, 5, "x")],
]


def _call(method):
    norm = [normalized_logprob(x) for x in INPUT]
    return method(choices=CHOICES, normalized_prompt_logprobs=norm, input_token_logprobs=INPUT,
                  output_token_logprobs=[[], [], []], unconditional_token_logprobs=UNCOND)


def test_token_length_normalized_is_argmax_of_mean():
    d = _call(token_length_normalized)
    assert d.meta_info["normalized_prompt_logprobs"] == pytest.approx([-1.0, -3.5 / 3, -1.2])
    assert d.decision == "ab"
    assert d.meta_info["input_token_logprobs"] is INPUT


def test_greedy_token_selection_pads_with_mean():
    d = _call(greedy_token_selection)
    # position 0: -1, -1, -1.2 -> keep ab, abc; position 1: -1 vs -0.5 -> abc
    assert d.decision == "abc"
    assert d.meta_info["greedy_logprob_matrix"][0] == [-1.0, -1.0, -1.0]
    assert d.meta_info["greedy_logprob_matrix"][2] == pytest.approx([-1.2, -1.2, -1.2])


def test_unconditional_likelihood_normalized():
    d = _call(unconditional_likelihood_normalized)
    # ab: mean(-1-0, -1+3) = 0.5 ; abc: mean(-1, 0, -1.5) = -0.8333 ; x: -1.2
    assert d.meta_info["normalized_unconditional_prompt_logprobs"] == pytest.approx([0.5, -2.5 / 3, -1.2])
    assert d.decision == "ab"
    assert unconditional_likelihood_normalized.requires_unconditional_logprobs
    with pytest.raises(ValueError, match="unconditional"):
        unconditional_likelihood_normalized(choices=CHOICES, normalized_prompt_logprobs=[0, 0, 0],
                                            input_token_logprobs=INPUT, output_token_logprobs=[[], [], []])


def test_names_and_errors():
    assert get_choices_method(None) is token_length_normalized
    assert get_choices_method("greedy_token_selection") is greedy_token_selection
    with pytest.raises(ValueError, match="no scored tokens"):
        normalized_logprob([(None, 1, "a")])
    assert math.isclose(normalized_logprob([(None, 1, "a"), (-2.0, 2, "b")]), -2.0)
