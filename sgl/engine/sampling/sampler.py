"""Batched sampling: SamplingBatchInfo (per-step tensors) and Sampler.

Order of operations (as SGLang's ``Sampler`` and vLLM's v1 sampler):

1. logit bias, 2. penalties (repetition, frequency, presence; see
``penalties.py``), 3. min_new_tokens ban of EOS/stop tokens, 4. grammar
``vocab_mask`` (-inf where not allowed), 5. greedy rows: argmax;
6. other rows: temperature, softmax, top-k, top-p (over the top-k-renormalized
distribution, as HF's warpers and vLLM), min-p (Nguyen et al. 2024,
arXiv:2407.01082: drop p < min_p * p_max), then sample.

Top-k/top-p work on the ``torch.topk`` candidates (a full sort only when
top-p mass reaches past them), and filtered probabilities go back to token-id
order. Sampling is inverse-CDF in token-id order with one uniform draw per
row: a request with ``sampling_seed`` draws it from its own
``torch.Generator``, so its tokens do not depend on which other requests
share the batch (nor on the candidate width); other rows share the global
RNG. Cost per step: softmax + topk + a float64 cumsum over ``[bs, vocab]``;
no Python loop except one ``torch.rand`` per seeded row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Sequence, Tuple

import torch

from sgl.engine.sampling.penalties import PenaltyState, apply_logit_bias, apply_penalties
from sgl.engine.sampling.sampling_params import SamplingParams
from sgl.core.registry import Registry

SAMPLERS: Registry["Sampler"] = Registry("sampler")

#: Candidate widths tried for top-p before a full vocabulary sort.
TOP_P_CANDIDATES = (256, 4096)


def make_generator(params: SamplingParams, device="cpu") -> Optional[torch.Generator]:
    """A request's private RNG: ``torch.Generator(device)`` seeded with
    ``params.sampling_seed``, or None when no seed was given. Create it once
    per request and pass it every step (its state advances as it samples).
    A CPU generator also works for GPU logits (one scalar copy per step)."""
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
        is_all_greedy / need_top_k / need_top_p / need_min_p: host-side
            flags that let the sampler skip work; max_top_k: the largest
            enabled top-k of a sampled row (0 if none).
        seeded_rows: sampled (non-greedy) rows that have a generator.
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
            ValueError: list lengths (or penalty_state rows) differ from
                ``len(params)``; a token id is outside the vocabulary.
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
            max_top_k=max([k for k, g in zip(top_ks, greedy) if not g and k < vocab_size], default=0),
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
            if penalty_state is None:
                need_prompt = any(p.repetition_penalty != 1 for p in params)
                penalty_state = PenaltyState.build(
                    output_ids, vocab_size, device, prompt_ids if need_prompt else None)
            elif penalty_state.batch_size != bs:
                raise ValueError(f"penalty_state has {penalty_state.batch_size} rows, expected {bs}")
            info.penalty_state = penalty_state
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
        if x is logits:  # .float() already copied lower-precision logits
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
        if info.need_top_k or info.need_top_p:
            probs = self._top_k_top_p(probs, info)
        if info.need_min_p:
            p_max = probs.amax(dim=-1, keepdim=True)
            probs = probs.masked_fill(probs < p_max * info.min_ps[:, None], 0.0)
        return self._inverse_cdf_sample(probs, info)

    @staticmethod
    def _top_k_top_p(probs: torch.Tensor, info: SamplingBatchInfo) -> torch.Tensor:
        """Zero the probabilities top-k / top-p drop; float32 ``[bs, vocab]``
        in token-id order (kept entries keep their exact values).

        Works on the ``width`` most likely candidates (``torch.topk``) instead
        of a full vocabulary sort; a top-p row whose kept mass may extend past
        the candidates (one host sync to check) retries with a wider set, up
        to a full sort. The kept set does not depend on the width.
        """
        vocab = info.vocab_size
        if info.need_top_p:
            floor = max(info.max_top_k, TOP_P_CANDIDATES[0])
            widths = sorted({floor, *(w for w in TOP_P_CANDIDATES if w > floor)})
            widths = [w for w in widths if w < vocab] + [vocab]
        else:
            widths = [min(info.max_top_k, vocab)]
        top_ks, top_ps = info.top_ks[:, None], info.top_ps[:, None]
        for width in widths:
            if width < vocab:
                vals, idx = probs.topk(width, dim=-1)
            else:
                vals, idx = probs.sort(dim=-1, descending=True)
            ranks = torch.arange(width, device=probs.device)[None, :]
            vals = vals.masked_fill(ranks >= top_ks, 0.0)
            has_k = top_ks <= width  # the whole top-k set is among the candidates
            filtered = has_k
            if info.need_top_p:
                cum = vals.cumsum(dim=-1)
                # top-p renormalizes over the top-k set (HF warpers / vLLM order)
                total = torch.where(has_k, cum.gather(1, (top_ks.clamp(max=width) - 1)),
                                    probs.sum(dim=-1, keepdim=True))
                limit = top_ps * total
                vals = vals.masked_fill((cum - vals) > limit, 0.0)
                filtered = has_k | (top_ps < 1.0)
                if width < vocab:
                    # mass before the first non-candidate must already exceed the limit
                    uncovered = ~has_k & (top_ps < 1.0) & ~info.greedy_mask[:, None] \
                        & (cum[:, -1:] <= limit)
                    if bool(uncovered.any()):
                        continue
            kept = torch.zeros_like(probs).scatter_(1, idx, vals)
            return torch.where(filtered, kept, probs)
        raise AssertionError("unreachable: the last width is the full vocabulary")

    @staticmethod
    def _inverse_cdf_sample(probs: torch.Tensor, info: SamplingBatchInfo) -> torch.Tensor:
        """One token per row by inverse-CDF over the (unnormalized) probs in
        token-id order, with ``u ~ U[0, 1)`` from the global RNG or, for a
        seeded row, from that request's generator (one draw per step)."""
        device = probs.device
        cum = probs.to(torch.float64).cumsum(dim=-1)
        total = cum[:, -1:]
        u = torch.rand(probs.shape[0], 1, dtype=torch.float64, device=device)
        for i in info.seeded_rows:  # drawn where the generator lives (CPU generators work on GPU)
            g = info.generators[i]
            u[i] = torch.rand(1, dtype=torch.float64, device=g.device, generator=g).to(device)
        u = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
        ids = torch.searchsorted(cum, u, right=True).squeeze(1)
        return ids.clamp_(max=info.vocab_size - 1)


SAMPLERS.register("default")(Sampler)  # the name configs/sampler/default.yaml uses
