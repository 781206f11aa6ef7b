"""Choice-selection methods for ``select`` / ``gen(choices=...)``.

Every method receives, per choice, the log-probabilities of the choice's
tokens given the prompt (``input_token_logprobs``: a list per choice of
``(logprob, token_id, text)`` triples) and returns a :class:`ChoicesDecision`.

The three methods and their meta-info keys are SGLang's
(``python/sglang/lang/choices.py``):

* ``token_length_normalized`` (default): argmax of the mean token logprob
  (``normalized_prompt_logprobs``).
* ``greedy_token_selection``: compare choices token by token, keeping those
  with the highest logprob at each position; shorter choices are padded with
  their own mean logprob.
* ``unconditional_likelihood_normalized``: argmax of the mean of
  ``logP(token | prompt) - logP(token | choice alone)`` (the unconditional
  logprob of a choice's first token is taken as 0), a PMI-style score that
  discounts choices which are likely regardless of the prompt
  (Holtzman et al. 2021, "Surface Form Competition").
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

Triple = Sequence[Any]  # (logprob: float | None, token_id: int, text: str | None)


@dataclass
class ChoicesDecision:
    """The chosen string and the per-choice scores behind it."""

    decision: str
    meta_info: Optional[Dict[str, Any]] = None


def _argmax_first(values: Sequence[float]) -> int:
    if not values:
        raise ValueError("cannot take the argmax of an empty list of scores")
    return max(range(len(values)), key=values.__getitem__)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def normalized_logprob(token_logprobs: Sequence[Triple]) -> float:
    """Mean logprob over the triples whose logprob is not None (nats per token).

    Raises:
        ValueError: no scored token (e.g. an empty choice).
    """
    values = [t[0] for t in token_logprobs if t[0] is not None]
    if not values:
        raise ValueError("a choice has no scored tokens (is it empty?)")
    return _mean(values)


class ChoicesSamplingMethod(ABC):
    """Decides among choices from their token logprobs."""

    @property
    def requires_unconditional_logprobs(self) -> bool:
        """True when the backend must also score each choice without the prompt."""
        return False

    @abstractmethod
    def __call__(
        self,
        *,
        choices: List[str],
        normalized_prompt_logprobs: List[float],
        input_token_logprobs: List[List[Triple]],
        output_token_logprobs: List[List[Triple]],
        unconditional_token_logprobs: Optional[List[List[Triple]]] = None,
    ) -> ChoicesDecision: ...

    def __repr__(self):
        return type(self).__name__


def _base_meta(normalized, inputs, outputs) -> Dict[str, Any]:
    return {
        "normalized_prompt_logprobs": normalized,
        "input_token_logprobs": inputs,
        "output_token_logprobs": outputs,
    }


class TokenLengthNormalized(ChoicesSamplingMethod):
    """Highest mean token logprob wins (first one on ties)."""

    def __call__(self, *, choices, normalized_prompt_logprobs, input_token_logprobs,
                 output_token_logprobs, unconditional_token_logprobs=None) -> ChoicesDecision:
        best = choices[_argmax_first(normalized_prompt_logprobs)]
        return ChoicesDecision(best, _base_meta(normalized_prompt_logprobs, input_token_logprobs, output_token_logprobs))


class GreedyTokenSelection(ChoicesSamplingMethod):
    """Token-by-token elimination: at each position keep the choices with the
    highest logprob; a choice shorter than the longest is padded with its
    mean logprob.  Ties after the last position go to the first choice."""

    def __call__(self, *, choices, normalized_prompt_logprobs, input_token_logprobs,
                 output_token_logprobs, unconditional_token_logprobs=None) -> ChoicesDecision:
        rows = [[t[0] for t in option if t[0] is not None] for option in input_token_logprobs]
        width = max(len(r) for r in rows)
        matrix = [r + [_mean(r) if r else float("-inf")] * (width - len(r)) for r in rows]
        remaining = list(range(len(choices)))
        for j in range(width):
            best = max(matrix[i][j] for i in remaining)
            remaining = [i for i in remaining if matrix[i][j] == best]
            if len(remaining) == 1:
                break
        meta = _base_meta(normalized_prompt_logprobs, input_token_logprobs, output_token_logprobs)
        meta["greedy_logprob_matrix"] = matrix
        return ChoicesDecision(choices[remaining[0]], meta)


class UnconditionalLikelihoodNormalized(ChoicesSamplingMethod):
    """Highest mean of ``logP(tok | prompt) - logP(tok | choice only)`` wins."""

    @property
    def requires_unconditional_logprobs(self) -> bool:
        return True

    def __call__(self, *, choices, normalized_prompt_logprobs, input_token_logprobs,
                 output_token_logprobs, unconditional_token_logprobs=None) -> ChoicesDecision:
        if unconditional_token_logprobs is None:
            raise ValueError("unconditional_likelihood_normalized needs unconditional_token_logprobs")
        scores = []
        for cond, uncond in zip(input_token_logprobs, unconditional_token_logprobs):
            c = [t[0] for t in cond]
            u = [t[0] for t in uncond]
            if len(c) != len(u):
                raise ValueError(f"conditional ({len(c)}) and unconditional ({len(u)}) token counts differ")
            u[0] = u[0] or 0.0
            diffs = [a - b for a, b in zip(c, u) if a is not None]
            if not diffs:
                raise ValueError("a choice has no scored tokens (is it empty?)")
            scores.append(float(_mean(diffs)))
        meta = _base_meta(normalized_prompt_logprobs, input_token_logprobs, output_token_logprobs)
        meta["unconditional_token_logprobs"] = unconditional_token_logprobs
        meta["normalized_unconditional_prompt_logprobs"] = scores
        return ChoicesDecision(choices[_argmax_first(scores)], meta)


token_length_normalized = TokenLengthNormalized()
greedy_token_selection = GreedyTokenSelection()
unconditional_likelihood_normalized = UnconditionalLikelihoodNormalized()

CHOICES_METHODS = {
    "token_length_normalized": token_length_normalized,
    "greedy_token_selection": greedy_token_selection,
    "unconditional_likelihood_normalized": unconditional_likelihood_normalized,
}


def get_choices_method(method) -> ChoicesSamplingMethod:
    """Accept a method object or its name.

    Raises:
        ValueError: unknown name or type (the message lists the known names).
    """
    if method is None:
        return token_length_normalized
    if isinstance(method, ChoicesSamplingMethod):
        return method
    if isinstance(method, str) and method in CHOICES_METHODS:
        return CHOICES_METHODS[method]
    raise ValueError(f"choices_method must be one of {sorted(CHOICES_METHODS)} or a ChoicesSamplingMethod; got {method!r}")
