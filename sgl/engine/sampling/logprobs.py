"""Log-probabilities for ``return_logprob`` in SGLang's meta_info format.

Logprobs are computed from the RAW model logits (before logit bias,
penalties, grammar masks, temperature and top-k/p), as SGLang does by
default and as OpenAI's ``logprobs`` report the model's distribution.
SGLang's meta_info lists each position as a triple
``(logprob, token_id, token_text_or_None)``; the text is filled only when
``return_text_in_logprobs`` is set (pass a tokenizer then).
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple, Union

import torch

LogprobTriple = Tuple[float, int, Optional[str]]


def compute_logprobs(logits: torch.Tensor) -> torch.Tensor:
    """``log_softmax`` in float32 over the last dim.

    Args:
        logits: ``[m, vocab]`` raw model logits (any float dtype).

    Returns:
        float32 ``[m, vocab]`` natural-log probabilities.
    """
    return torch.log_softmax(logits.float(), dim=-1)


def gather_token_logprobs(logprobs: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """The logprob of one chosen token per row.

    Args:
        logprobs: float32 ``[m, vocab]``.
        token_ids: int ``[m]``.

    Returns:
        float32 ``[m]``: ``logprobs[i, token_ids[i]]``.

    Raises:
        ValueError: shapes disagree.
    """
    if token_ids.dim() != 1 or token_ids.shape[0] != logprobs.shape[0]:
        raise ValueError(f"token_ids must be [{logprobs.shape[0]}], got {tuple(token_ids.shape)}")
    return logprobs.gather(1, token_ids.long().to(logprobs.device)[:, None]).squeeze(1)


def get_top_logprobs(logprobs: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest logprobs per row, in descending order.

    Args:
        logprobs: float32 ``[m, vocab]``.
        k: how many (0 gives empty ``[m, 0]`` tensors).

    Returns:
        (values float32 ``[m, k]``, token ids int64 ``[m, k]``).

    Raises:
        ValueError: ``k`` is negative or larger than the vocabulary.
    """
    if not 0 <= k <= logprobs.shape[-1]:
        raise ValueError(f"top_logprobs_num must be in [0, {logprobs.shape[-1]}], got {k}")
    values, ids = torch.topk(logprobs, k, dim=-1)
    return values, ids


def _token_texts(ids: List[int], tokenizer: Any) -> List[Optional[str]]:
    if tokenizer is None:
        return [None] * len(ids)
    # One token at a time, as SGLang's detokenize_logprob_tokens does.
    return list(tokenizer.batch_decode([[i] for i in ids]))


def to_triples(
    values: torch.Tensor, ids: torch.Tensor, tokenizer: Any = None
) -> Union[List[LogprobTriple], List[List[LogprobTriple]]]:
    """Convert logprobs to SGLang's ``(logprob, token_id, text_or_None)`` triples.

    Args:
        values: float ``[m]`` (one chosen token per position) or ``[m, k]``
            (top-k per position).
        ids: int, same shape as ``values``.
        tokenizer: a HF tokenizer to fill the text, or None (text is None).

    Returns:
        ``[m]`` input: a list of m triples; ``[m, k]`` input: a list of m
        lists of k triples.

    Raises:
        ValueError: shapes differ or are not 1-D/2-D.
    """
    if values.shape != ids.shape or values.dim() not in (1, 2):
        raise ValueError(
            f"values and ids must have the same 1-D or 2-D shape, got "
            f"{tuple(values.shape)} and {tuple(ids.shape)}")
    vals = values.detach().float().cpu().tolist()
    toks = ids.detach().long().cpu().tolist()
    if values.dim() == 1:
        return list(zip(vals, toks, _token_texts(toks, tokenizer)))
    flat_ids = [t for row in toks for t in row]
    texts = iter(_token_texts(flat_ids, tokenizer))
    return [[(v, t, next(texts)) for v, t in zip(vr, tr)] for vr, tr in zip(vals, toks)]
