"""Sampling: SamplingParams, the batched Sampler, penalties and logprobs."""

from sgl.engine.sampling.logprobs import (
    compute_logprobs,
    gather_token_logprobs,
    get_top_logprobs,
    to_triples,
)
from sgl.engine.sampling.penalties import PenaltyState, apply_logit_bias, apply_penalties
from sgl.engine.sampling.sampler import SAMPLERS, Sampler, SamplingBatchInfo, make_generator
from sgl.engine.sampling.sampling_params import SamplingParams

__all__ = [
    "SamplingParams",
    "SamplingBatchInfo",
    "Sampler",
    "SAMPLERS",
    "make_generator",
    "PenaltyState",
    "apply_penalties",
    "apply_logit_bias",
    "compute_logprobs",
    "gather_token_logprobs",
    "get_top_logprobs",
    "to_triples",
]
