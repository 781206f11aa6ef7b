"""After a model step: logprobs, sampling, grammar advance and jump-forward, detokenization and
stop conditions. The processor updates the requests and returns what the scheduler must do with
them (:class:`StepOutput`: finish, re-extend after a jump, stream); it never calls back into it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable, List, Sequence, Tuple

import torch

from sgl.engine.jump_forward import JumpForward
from sgl.engine.req import Req
from sgl.engine.sampling.sampler import Sampler
from sgl.engine.stop import FinishReason
from sgl.engine.sampling.logprobs import compute_logprobs, gather_token_logprobs, get_top_logprobs, to_triples
from sgl.engine.sampling.sampler import SamplingBatchInfo


@dataclass
class StepOutput:
    """What a step's token processing asks of the scheduler, in request order.

    Attributes:
        finished: requests whose ``finish_reason`` is now set (release their KV, send the result).
        jumped: ``(req, n)`` for unfinished requests that appended ``n`` jump-forward tokens (they
            need an extend before the next decode).
        stream: unfinished streaming requests with new visible text to send.
    """
    finished: List[Req] = field(default_factory=list)
    jumped: List[Tuple[Req, int]] = field(default_factory=list)
    stream: List[Req] = field(default_factory=list)


class OutputProcessor:
    """Turns logits into next tokens and request updates. Runs in the scheduler thread.

    Args:
        tokenizer: for token texts in logprobs (``return_text_in_logprobs``).
        eos_token_ids: the model's EOS ids (sampling bans them below ``min_new_tokens``).
        sampler: the :class:`~sgl.engine.sampling.sampler.Sampler` (or a registered replacement).
        jump_forward: the engine's jump-forward policy.
    """

    def __init__(self, tokenizer, eos_token_ids: Iterable[int], sampler: Sampler, jump_forward: JumpForward):
        self.tokenizer = tokenizer
        self.eos_token_ids = set(eos_token_ids)
        self.sampler = sampler
        self.jump_forward = jump_forward

    # ------------------------------------------------------------ logprobs
    def record_input_logprobs(self, r: Req, logits: torch.Tensor, first_pos: int) -> None:
        """``logits[j]`` (float32 ``[m, vocab]``) are the model's outputs at prompt positions
        ``first_pos + j``; each predicts the token at the next position."""
        lp = compute_logprobs(logits)
        nxt = torch.tensor(r.input_ids[first_pos + 1:first_pos + 1 + logits.shape[0]], dtype=torch.int64)
        vals = gather_token_logprobs(lp, nxt)
        tok = self.tokenizer if r.logprob.return_text else None
        r.input_token_logprobs.extend(to_triples(vals, nxt, tok))
        if r.logprob.top_logprobs_num:
            tv, ti = get_top_logprobs(lp, r.logprob.top_logprobs_num)
            for i in range(nxt.numel()):
                r.input_top_logprobs.append(to_triples(tv[i], ti[i], tok))

    def record_first_input_logprob(self, r: Req) -> None:
        """The first prompt token has no logprob: ``(None, token_id, text)``."""
        text = self.tokenizer.decode([r.input_ids[0]]) if r.logprob.return_text else None
        r.input_token_logprobs.append((None, r.input_ids[0], text))
        if r.logprob.top_logprobs_num:
            r.input_top_logprobs.append(None)

    # ------------------------------------------------------------ sampling
    def sample(self, reqs: Sequence[Req], logits: torch.Tensor) -> torch.Tensor:
        """float32 ``[bs, vocab]`` logits -> int64 ``[bs]`` next tokens (grammar masks applied)."""
        info = SamplingBatchInfo.from_params(
            [r.sampling_params for r in reqs], [r.output_ids for r in reqs],
            [r.generator for r in reqs], logits.shape[-1], logits.device,
            eos_token_ids=self.eos_token_ids, prompt_ids=[r.input_ids for r in reqs])
        if any(r.grammar is not None for r in reqs):
            mask = info.ensure_vocab_mask()
            for i, r in enumerate(reqs):
                if r.grammar is None:
                    continue
                mask[i].fill_(False)
                if r.forced_tokens:
                    mask[i, r.forced_tokens[0]] = True
                else:
                    r.grammar.fill_vocab_mask(mask[i])
        return self.sampler.forward(logits, info)

    # ------------------------------------------------------------ per token
    def process(self, reqs: Sequence[Req], logits: torch.Tensor, next_ids: torch.Tensor) -> StepOutput:
        """Append each sampled token (int64 ``[bs]``, sampled from float32 ``[bs, vocab]`` ``logits``)
        and update the request: logprobs, grammar and jump-forward, text, stop conditions."""
        out = StepOutput()
        want_lp = [i for i, r in enumerate(reqs) if r.logprob.enabled]
        lp = compute_logprobs(logits[want_lp]) if want_lp else None
        ids = next_ids.tolist()
        now = time.perf_counter()
        for j, i in enumerate(want_lp):
            r, tok = reqs[i], ids[i]
            text_tok = self.tokenizer if r.logprob.return_text else None
            r.output_token_logprobs.extend(to_triples(lp[j, tok:tok + 1], torch.tensor([tok]), text_tok))
            if r.logprob.top_logprobs_num:
                tv, ti = get_top_logprobs(lp[j:j + 1], r.logprob.top_logprobs_num)
                r.output_top_logprobs.append(to_triples(tv[0], ti[0], text_tok))
        for r, tok in zip(reqs, ids):
            if r.first_token_time is None:
                r.first_token_time = now
            r.output_ids.append(tok)
            new = [tok]
            jumped = []
            if r.grammar is not None:
                r.grammar.accept_token(tok)
                jumped = self.jump_forward.after_token(r, tok)
                new += jumped
            self.update_text(r, new, out)
            if jumped and r.finish_reason is None:
                out.jumped.append((r, len(jumped)))
        return out

    def update_text(self, r: Req, new_ids: Sequence[int], out: StepOutput) -> None:
        """Detokenize ``new_ids`` (already in ``r.output_ids``; may be empty, to check text appended
        before the first step), check every stop condition on the whole new text, and record in
        ``out`` whether ``r`` finished or has text to stream. Before the first step only the request's
        own stop conditions apply (a grammar that is already complete still lets the model end it)."""
        if new_ids:
            r.raw_text += r.detokenizer.add_tokens(new_ids)
        reason = r.stop_checker.check(r.output_ids, r.raw_text)
        if reason is None and new_ids and r.grammar is not None and r.grammar.is_terminated():
            last = r.output_ids[-1] if r.output_ids else None
            reason = FinishReason.stop(last if last in self.eos_token_ids else None)
        if reason is not None:
            r.finish_reason = reason  # a trailing incomplete UTF-8 character is dropped, never sent as U+FFFD
            r.text = r.stop_checker.visible_text(r.raw_text, True)
            out.finished.append(r)
        else:
            r.text = r.stop_checker.visible_text(r.raw_text, False)
            if r.stream and len(r.text) > r.sent_text_len:
                out.stream.append(r)
