"""After a model step: logprobs, sampling, grammar advance and jump-forward,
detokenization, stop conditions and delivery of results to the request's sink."""

from __future__ import annotations

import time
from typing import Sequence

import torch

from sgl.engine.req import Req
from sgl.engine.sampling.logprobs import compute_logprobs, gather_token_logprobs, get_top_logprobs, to_triples
from sgl.engine.sampling.sampler import SamplingBatchInfo


class OutputProcessor:
    """Turns logits into next tokens and request updates. Runs in the scheduler thread."""

    def __init__(self, sched):
        self.s = sched

    # ------------------------------------------------------------ logprobs
    def record_input_logprobs(self, r: Req, logits: torch.Tensor, first_pos: int) -> None:
        """``logits[j]`` (float32 ``[m, vocab]``) are the model's outputs at prompt positions
        ``first_pos + j``; each predicts the token at the next position."""
        lp = compute_logprobs(logits)
        nxt = torch.tensor(r.input_ids[first_pos + 1:first_pos + 1 + logits.shape[0]], dtype=torch.int64)
        vals = gather_token_logprobs(lp, nxt)
        tok = self.s.tokenizer if r.logprob.return_text else None
        r.input_token_logprobs.extend(to_triples(vals, nxt, tok))
        if r.logprob.top_logprobs_num:
            tv, ti = get_top_logprobs(lp, r.logprob.top_logprobs_num)
            for i in range(nxt.numel()):
                r.input_top_logprobs.append(to_triples(tv[i], ti[i], tok))

    def record_first_input_logprob(self, r: Req) -> None:
        """The first prompt token has no logprob: ``(None, token_id, text)``."""
        text = self.s.tokenizer.decode([r.input_ids[0]]) if r.logprob.return_text else None
        r.input_token_logprobs.append((None, r.input_ids[0], text))
        if r.logprob.top_logprobs_num:
            r.input_top_logprobs.append(None)

    # ------------------------------------------------------------ sampling
    def sample(self, reqs: Sequence[Req], logits: torch.Tensor) -> torch.Tensor:
        """float32 ``[bs, vocab]`` logits -> int64 ``[bs]`` next tokens (grammar masks applied)."""
        s = self.s
        info = SamplingBatchInfo.from_params(
            [r.sampling_params for r in reqs], [r.output_ids for r in reqs],
            [r.generator for r in reqs], logits.shape[-1], logits.device,
            eos_token_ids=s.eos_token_ids, prompt_ids=[r.input_ids for r in reqs])
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
        return s.sampler.forward(logits, info)

    # ------------------------------------------------------------ per token
    def process(self, reqs: Sequence[Req], logits: torch.Tensor, next_ids: torch.Tensor) -> None:
        """Append each sampled token and update the request (logprobs, grammar, text, stop, stream)."""
        want_lp = [i for i, r in enumerate(reqs) if r.logprob.enabled]
        lp = compute_logprobs(logits[want_lp]) if want_lp else None
        ids = next_ids.tolist()
        now = time.perf_counter()
        for j, i in enumerate(want_lp):
            r, tok = reqs[i], ids[i]
            text_tok = self.s.tokenizer if r.logprob.return_text else None
            r.output_token_logprobs.extend(to_triples(lp[j, tok:tok + 1], torch.tensor([tok]), text_tok))
            if r.logprob.top_logprobs_num:
                tv, ti = get_top_logprobs(lp[j:j + 1], r.logprob.top_logprobs_num)
                r.output_top_logprobs.append(to_triples(tv[0], ti[0], text_tok))
        for r, tok in zip(reqs, ids):
            if r.first_token_time is None:
                r.first_token_time = now
            r.output_ids.append(tok)
            new = [tok]
            if r.grammar is not None:
                r.grammar.accept_token(tok)
                jumped = self.s.jump_forward.after_token(r, tok)
                if jumped:
                    new += jumped
                    self.s.on_jump_forward(r, len(jumped))
            self.update_text(r, new)

    def update_text(self, r: Req, new_ids: Sequence[int]) -> None:
        """Detokenize new tokens, check stop conditions, and stream or finish."""
        r.raw_text += r.detokenizer.add_tokens(new_ids)
        reason = r.stop_checker.check(r.output_ids, r.raw_text)
        if reason is None and r.grammar is not None and r.grammar.is_terminated():
            reason = self.s.grammar_finish_reason(r)
        if reason is not None:
            r.finish_reason = reason  # a trailing incomplete UTF-8 character is dropped, never sent as U+FFFD
            r.text = r.stop_checker.visible_text(r.raw_text, True)
            self.s.finish(r)
        else:
            r.text = r.stop_checker.visible_text(r.raw_text, False)
            if r.stream and len(r.text) > r.sent_text_len:
                self.s.emit(r, final=False)
