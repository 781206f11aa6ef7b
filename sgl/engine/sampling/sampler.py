"""Batched sampling: SamplingBatchInfo (per-step tensors) and Sampler.

Order of operations (as SGLang's ``Sampler`` and vLLM's v1 sampler):

1. logit bias, 2. penalties (repetition, frequency, presence; see
``penalties.py``), 3. min_new_tokens ban of EOS/stop tokens, 4. grammar
``vocab_mask`` (-inf where not allowed), 5. greedy rows: argmax;
6. other rows: temperature, softmax, top-k, top-p (over the top-k-renormalized
distribution, as HF's warpers and vLLM), min-p (Nguyen et al. 2024,
arXiv:2407.01082: drop p < min_p * p_max), then sample.

Sampling uses the exponential race (``argmax(p / E)``, ``E ~ Exp(1)`` iid,
equivalent to Gumbel-max; the same trick as vLLM/SGLang's torch paths). A
request with ``sampling_seed`` draws its ``E`` over the *whole vocabulary, in
token-id order*, from its own ``torch.Generator``, so its tokens do not depend
on which other requests share the batch (nor on the sort width). Other rows
share the global RNG.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Sequence, Tuple

import torch

from sgl.engine.sampling.penalties import PenaltyState, apply_logit_bias, apply_penalties
from sgl.engine.sampling.sampling_params import SamplingParams
from sgl.registry import Registry

SAMPLERS: Registry["Sampler"] = Registry("sampler")


def make_generator(params: SamplingParams, device="cpu") -> Optional[torch.Generator]:
    """A request's private RNG: ``torch.Generator(device)`` seeded with
    ``params.sampling_seed``, or None when no seed was given. Create it once
    per request and pass it every step (its state advances as it samples)."""
    if params.sampling_seed is None:
        return None
    return torch.Generator(device=device).manual_seed(int(params.sampling_seed))


@dataclass
class SamplingBatchInfo:
    """The sampling tensors of one decode/extend step (``bs`` requests).

    Attributes:
        vocab_size: logit columns.
        temperatures: float32 ``[bs, 1]`` (1.0 for greedy rows).
        top_ps, min_ps: float32 ``[bs]``; top_ks: int64 ``[bs]`` (disabled
            top-k is ``vocab_size``).
        greedy_mask: bool ``[bs]``, rows decoded by argmax.
        generators: per row, a request's ``torch.Generator`` or None.
        is_all_greedy / need_top_k / need_top_p / need_min_p / max_top_k:
            host-side flags that let the sampler skip work (no device sync).
        frequency_penalties, presence_penalties, repetition_penalties:
            float32 ``[bs, 1]``, or None when no row has any penalty.
        penalty_state: token counts for the penalties, or None.
        logit_bias: (rows int64 ``[k]``, token ids int64 ``[k]``, values
            float32 ``[k]``), or None.
        min_tokens_ban: (rows int64 ``[k]``, token ids int64 ``[k]``): EOS and
            stop_token_ids of rows still below ``min_new_tokens``; set to -inf.
        vocab_mask: bool ``[bs, vocab]`` (True = allowed), or None. The caller
            sets it for grammar-constrained rows (see :meth:`ensure_vocab_mask`);
            rows of free requests stay all True. Each row needs >= 1 allowed token.
    """

    vocab_size: int
    temperatures: torch.Tensor
    top_ps: torch.Tensor
    top_ks: torch.Tensor
    min_ps: torch.Tensor
    greedy_mask: torch.Tensor
    generators: List[Optional[torch.Generator]]
    is_all_greedy: bool
    need_top_k: bool
    need_top_p: bool
    need_min_p: bool
    max_top_k: int
    seeded_rows: List[int] = field(default_factory=list)
    frequency_penalties: Optional[torch.Tensor] = None
    presence_penalties: Optional[torch.Tensor] = None
    repetition_penalties: Optional[torch.Tensor] = None
    penalty_state: Optional[PenaltyState] = None
    logit_bias: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None
    min_tokens_ban: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
    vocab_mask: Optional[torch.Tensor] = None

    @property
    def batch_size(self) -> int:
        return self.temperatures.shape[0]

    @classmethod
    def from_params(
        cls,
        params: Sequence[SamplingParams],
        output_ids: Sequence[Sequence[int]],
        generators: Sequence[Optional[torch.Generator]],
        vocab_size: int,
        device="cpu",
        *,
        eos_token_ids: Iterable[int] = (),
        prompt_ids: Optional[Sequence[Sequence[int]]] = None,
        penalty_state: Optional[PenaltyState] = None,
    ) -> "SamplingBatchInfo":
        """Build the step's tensors from each request's params and output so far.

        Args:
            params: one SamplingParams per row (already verified).
            output_ids: per row, the generated ids so far (drives penalties
                and the min_new_tokens ban).
            generators: per row, the request's generator (see
                :func:`make_generator`) or None.
            vocab_size: logit columns.
            device: device of the logits.
            eos_token_ids: the tokenizer's EOS id(s), banned with
                stop_token_ids while a row is below min_new_tokens (EOS only
                when not ignore_eos).
            prompt_ids: per row, prompt ids, so the repetition penalty also
                covers the prompt (SGLang/HF/vLLM behaviour); None = output only.
            penalty_state: a state the caller keeps up to date across steps;
                if None and a row has penalties, one is built from
                ``output_ids`` (cost: see ``penalties.py``).

        Raises:
            ValueError: list lengths differ from ``len(params)``.
        """
        bs = len(params)
        for name, seq in (("output_ids", output_ids), ("generators", generators)):
            if len(seq) != bs:
                raise ValueError(f"{name} has {len(seq)} rows, expected {bs}")
        greedy = [p.is_greedy for p in params]
        top_ks = [vocab_size if (p.top_k < 0 or p.top_k > vocab_size) else p.top_k for p in params]
        f32 = dict(dtype=torch.float32, device=device)
        info = cls(
            vocab_size=vocab_size,
            temperatures=torch.tensor(
                [[1.0 if g else float(p.temperature)] for p, g in zip(params, greedy)], **f32
            ).reshape(bs, 1),
            top_ps=torch.tensor([float(p.top_p) for p in params], **f32),
            top_ks=torch.tensor(top_ks, dtype=torch.int64, device=device),
            min_ps=torch.tensor([float(p.min_p) for p in params], **f32),
            greedy_mask=torch.tensor(greedy, dtype=torch.bool, device=device),
            generators=list(generators),
            is_all_greedy=all(greedy),
            need_top_k=any(k < vocab_size for k, g in zip(top_ks, greedy) if not g),
            need_top_p=any(p.top_p < 1.0 for p, g in zip(params, greedy) if not g),
            need_min_p=any(p.min_p > 0.0 for p, g in zip(params, greedy) if not g),
            max_top_k=max([k for k, g in zip(top_ks, greedy) if not g], default=vocab_size),
            seeded_rows=[i for i, (g, gen) in enumerate(zip(greedy, generators))
                         if gen is not None and not g],
        )
        if any(p.frequency_penalty != 0 or p.presence_penalty != 0 or p.repetition_penalty != 1
               for p in params):
            col = lambda name: torch.tensor(  # noqa: E731
                [float(getattr(p, name)) for p in params], **f32).reshape(bs, 1)
            info.frequency_penalties = col("frequency_penalty")
            info.presence_penalties = col("presence_penalty")
            info.repetition_penalties = col("repetition_penalty")
            info.penalty_state = penalty_state or PenaltyState.build(
                output_ids, vocab_size, device, prompt_ids)
        bias = [(i, int(t), float(v)) for i, p in enumerate(params)
                for t, v in (p.logit_bias or {}).items()]
        if bias:
            r, t, v = zip(*bias)
            info.logit_bias = (torch.tensor(r, device=device), torch.tensor(t, device=device),
                               torch.tensor(v, **f32))
        eos = [int(e) for e in eos_token_ids]
        ban = []
        for i, (p, out) in enumerate(zip(params, output_ids)):
            if len(out) < p.min_new_tokens:
                ids = set(p.stop_token_ids or []) | (set() if p.ignore_eos else set(eos))
                ban.extend((i, t) for t in sorted(ids))
        if ban:
            r, t = zip(*ban)
            info.min_tokens_ban = (torch.tensor(r, device=device), torch.tensor(t, device=device))
        return info

    def ensure_vocab_mask(self) -> torch.Tensor:
        """The bool ``[bs, vocab]`` grammar mask, allocated all-True on first
        use; write a constrained row's allowed set into it."""
        if self.vocab_mask is None:
            self.vocab_mask = torch.ones(
                self.batch_size, self.vocab_size, dtype=torch.bool, device=self.temperatures.device)
        return self.vocab_mask


@SAMPLERS.register("torch")
class Sampler:
    """Pure-PyTorch batched sampler (see module docstring for the algorithm)."""

    def __call__(self, logits: torch.Tensor, info: SamplingBatchInfo) -> torch.Tensor:
        return self.forward(logits, info)

    def forward(self, logits: torch.Tensor, info: SamplingBatchInfo) -> torch.Tensor:
        """Pick one next token per row.

        Args:
            logits: ``[bs, vocab]`` raw model logits (not modified).
            info: the step's SamplingBatchInfo.

        Returns:
            int64 ``[bs]`` next token ids.

        Raises:
            ValueError: logits / vocab_mask shapes do not match ``info``.
        """
        bs, vocab = info.batch_size, info.vocab_size
        if logits.dim() != 2 or tuple(logits.shape) != (bs, vocab):
            raise ValueError(f"logits must be [{bs}, {vocab}], got {tuple(logits.shape)}")
        if info.vocab_mask is not None and tuple(info.vocab_mask.shape) != (bs, vocab):
            raise ValueError(f"vocab_mask must be [{bs}, {vocab}], got {tuple(info.vocab_mask.shape)}")
        logits = self.process_logits(logits, info)
        if info.is_all_greedy:  # fast path: one argmax, no softmax / sort
            return logits.argmax(dim=-1)
        sampled = self._sample(logits, info)
        return torch.where(info.greedy_mask, logits.argmax(dim=-1), sampled)

    @staticmethod
    def process_logits(logits: torch.Tensor, info: SamplingBatchInfo) -> torch.Tensor:
        """Steps 1-4 (bias, penalties, min_new_tokens ban, grammar mask) on a
        float32 copy; returns ``logits`` itself (as float32) if none apply."""
        x = logits.float()
        if (info.logit_bias is None and info.penalty_state is None
                and info.min_tokens_ban is None and info.vocab_mask is None):
            return x
        x = x.clone()
        if info.logit_bias is not None:
            apply_logit_bias(x, *info.logit_bias)
        if info.penalty_state is not None:
            apply_penalties(x, info.penalty_state, info.frequency_penalties,
                            info.presence_penalties, info.repetition_penalties)
        if info.min_tokens_ban is not None:
            x[info.min_tokens_ban] = float("-inf")
        if info.vocab_mask is not None:
            x.masked_fill_(~info.vocab_mask, float("-inf"))
        return x

    def _sample(self, logits: torch.Tensor, info: SamplingBatchInfo) -> torch.Tensor:
        probs = torch.softmax(logits / info.temperatures, dim=-1)
        idx = None
        if info.need_top_p or info.need_top_k:
            if info.need_top_p or info.max_top_k >= info.vocab_size:
                probs, idx = probs.sort(dim=-1, descending=True)
            else:  # top-k only: a partial sort of width max_top_k
                probs, idx = probs.topk(info.max_top_k, dim=-1)
            if info.need_top_k:
                cols = torch.arange(probs.shape[1], device=probs.device)
                probs.masked_fill_(cols[None, :] >= info.top_ks[:, None], 0.0)
            if info.need_top_p:
                cum = probs.cumsum(dim=-1)
                # mass strictly before a token exceeds top_p of the kept mass -> drop
                probs.masked_fill_((cum - probs) > info.top_ps[:, None] * cum[:, -1:], 0.0)
        if info.need_min_p:
            p_max = probs.amax(dim=-1, keepdim=True)
            probs.masked_fill_(probs < p_max * info.min_ps[:, None], 0.0)
        choice = (probs / self._exponential_noise(probs.shape, idx, info)).argmax(dim=-1)
        if idx is None:
            return choice
        return idx.gather(1, choice[:, None]).squeeze(1)

    @staticmethod
    def _exponential_noise(shape, idx: Optional[torch.Tensor], info: SamplingBatchInfo) -> torch.Tensor:
        """Exp(1) noise ``[bs, width]``; seeded rows use their own generator
        over the full vocabulary (token-id order), gathered through ``idx``."""
        device = info.temperatures.device
        q = torch.empty(shape, dtype=torch.float32, device=device).exponential_()
        for i in info.seeded_rows:
            full = torch.empty(info.vocab_size, dtype=torch.float32, device=device)
            full.exponential_(generator=info.generators[i])
            q[i] = full if idx is None else full[idx[i]]
        return q.clamp_min_(torch.finfo(torch.float32).tiny)
