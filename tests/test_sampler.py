"""Sampler, SamplingBatchInfo, penalties and logprobs: exact values on small rows."""

import math

import pytest
import torch

from sgl.engine.sampling import (
    PenaltyState,
    Sampler,
    SamplingBatchInfo,
    SamplingParams,
    compute_logprobs,
    gather_token_logprobs,
    get_top_logprobs,
    make_generator,
    to_triples,
)

PROBS5 = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05])
LOGITS5 = PROBS5.log()


def make_info(params, output_ids=None, vocab=5, **kw):
    output_ids = output_ids if output_ids is not None else [[] for _ in params]
    gens = [make_generator(p) for p in params]
    return SamplingBatchInfo.from_params(params, output_ids, gens, vocab, "cpu", **kw)


def sampled_set(params, logits_row, n=4000, seed=0):
    torch.manual_seed(seed)
    info = make_info([params] * n, vocab=logits_row.numel())
    out = Sampler()(logits_row.expand(n, -1).clone(), info)
    return set(out.tolist()), out


# ---------------------------------------------------------------- greedy
def test_greedy_is_argmax_and_fast_path(monkeypatch):
    torch.manual_seed(1)
    logits = torch.randn(6, 50)
    info = make_info([SamplingParams(temperature=0.0)] * 6, vocab=50)
    assert info.is_all_greedy

    def boom(*a, **k):
        raise AssertionError("all-greedy batch must not sample")

    monkeypatch.setattr(Sampler, "_sample", boom)
    before = logits.clone()
    out = Sampler()(logits, info)
    assert out.dtype == torch.int64 and out.tolist() == logits.argmax(-1).tolist()
    assert torch.equal(logits, before)  # input not modified


def test_top_k_1_and_tiny_top_p_are_argmax_in_mixed_batch():
    torch.manual_seed(2)
    logits = torch.randn(4, 50) * 3
    params = [SamplingParams(top_k=1, temperature=1.5), SamplingParams(top_p=1e-6),
              SamplingParams(temperature=0.0), SamplingParams(temperature=1.0)]
    info = make_info(params, vocab=50)
    assert not info.is_all_greedy and info.greedy_mask.tolist() == [True, False, True, False]
    for _ in range(20):
        out = Sampler()(logits, info)
        assert out[:3].tolist() == logits[:3].argmax(-1).tolist()


# ------------------------------------------------------- filtering sets
def test_min_p_exact_allowed_set():
    # p_max = 0.4; min_p = 0.3 -> threshold 0.12 -> {0, 1, 2}
    s, _ = sampled_set(SamplingParams(min_p=0.3), LOGITS5)
    assert s == {0, 1, 2}
    s, _ = sampled_set(SamplingParams(min_p=0.7), LOGITS5)  # threshold 0.28 -> {0, 1}
    assert s == {0, 1}


def test_top_k_exact_allowed_set():
    s, _ = sampled_set(SamplingParams(top_k=3), LOGITS5)
    assert s == {0, 1, 2}


def test_top_p_exact_allowed_set():
    # mass before token: 0, .4, .7, .85, .95 -> top_p=.6 keeps {0, 1}
    s, _ = sampled_set(SamplingParams(top_p=0.6), LOGITS5)
    assert s == {0, 1}
    s, _ = sampled_set(SamplingParams(top_p=0.9), LOGITS5)
    assert s == {0, 1, 2, 3}


def test_top_p_applies_to_top_k_renormalized_distribution():
    # after top_k=2: (.571, .429); mass before token 1 is .571 > .55 -> only {0}
    s, _ = sampled_set(SamplingParams(top_k=2, top_p=0.55), LOGITS5)
    assert s == {0}


def test_vocab_mask_forces_allowed_tokens():
    torch.manual_seed(3)
    bs, vocab = 64, 40
    logits = torch.randn(bs, vocab) * 4
    params = [SamplingParams(temperature=2.0)] * (bs - 1) + [SamplingParams(temperature=0.0)]
    info = make_info(params, vocab=vocab)
    mask = info.ensure_vocab_mask()
    assert mask.all()
    mask[:] = False
    mask[:, [3, 7]] = True
    out = Sampler()(logits, info)
    assert set(out.tolist()) == {3, 7}
    assert out[-1].item() == (3 if logits[-1, 3] > logits[-1, 7] else 7)


def test_free_rows_untouched_by_other_rows_mask():
    logits = torch.tensor([[0.0, 5.0, 1.0], [0.0, 5.0, 1.0]])
    info = make_info([SamplingParams(temperature=0.0)] * 2, vocab=3)
    info.ensure_vocab_mask()[0] = torch.tensor([True, False, True])
    assert Sampler()(logits, info).tolist() == [2, 1]


# ------------------------------------------------------------- penalties
def test_penalties_and_bias_hand_computed():
    logits = torch.tensor([[2.0, -1.0, 0.5, -0.5, 1.0]])
    p = SamplingParams(repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25,
                       logit_bias={0: 2.0, 4: 1.5})
    info = make_info([p], output_ids=[[0, 0, 1]], prompt_ids=[[2]])
    got = Sampler.process_logits(logits, info)
    # t0: (2+2)/2 - 2*.5 - .25 ; t1: -1*2 - .5 - .25 ; t2 (prompt): .5/2 ; t3 ; t4: 1+1.5
    expected = torch.tensor([[0.75, -2.75, 0.25, -0.5, 2.5]])
    assert torch.allclose(got, expected, atol=1e-6)
    assert logits[0, 0].item() == 2.0  # caller's logits untouched


def test_repetition_without_prompt_covers_output_only():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    info = make_info([SamplingParams(repetition_penalty=1.5)], output_ids=[[1]], vocab=3)
    got = Sampler.process_logits(logits, info)
    assert torch.allclose(got, torch.tensor([[2.0, -1.5, 0.5]]))


def test_negative_penalties_reward_repeats_and_change_greedy_choice():
    logits = torch.tensor([[1.0, 0.9]])
    p = SamplingParams(temperature=0.0, frequency_penalty=-0.1)
    assert Sampler()(logits, make_info([p], [[1, 1]], vocab=2)).item() == 1  # 0.9 + .2 > 1
    p = SamplingParams(temperature=0.0, presence_penalty=0.2)
    assert Sampler()(logits, make_info([p], [[0]], vocab=2)).item() == 1  # 1 - .2 < .9


def test_penalty_state_update_filter_merge_match_build():
    vocab = 7
    outs = [[1, 1, 3], [], [6]]
    st = PenaltyState.build(outs, vocab, prompt_ids=[[0], [2, 2], []])
    assert st.output_counts[0].tolist() == [0, 2, 0, 1, 0, 0, 0]
    assert st.prompt_mask[1].tolist() == [False, False, True, False, False, False, False]
    st.update(torch.tensor([3, 5, 6]))
    ref = PenaltyState.build([[1, 1, 3, 3], [5], [6, 6]], vocab)
    assert torch.equal(st.output_counts, ref.output_counts)
    sub = st.filter([2, 0])
    assert torch.equal(sub.output_counts, ref.output_counts[[2, 0]])
    merged = PenaltyState.merge([sub, PenaltyState.build([[4]], vocab)])
    assert merged.output_counts.shape == (3, vocab) and merged.output_counts[2, 4] == 1
    assert merged.prompt_mask[2].sum() == 0 and merged.prompt_mask[1, 0]
    with pytest.raises(ValueError, match="output_ids"):
        PenaltyState.build([[7]], vocab)


def test_caller_kept_penalty_state_is_used():
    st = PenaltyState.build([[0, 0]], 3)
    info = make_info([SamplingParams(frequency_penalty=1.0)], output_ids=[[]], vocab=3, penalty_state=st)
    assert Sampler.process_logits(torch.zeros(1, 3), info).tolist() == [[-2.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match="penalty_state"):
        make_info([SamplingParams(frequency_penalty=1.0)] * 2, vocab=3, penalty_state=st)


def test_no_penalty_state_without_penalties():
    info = make_info([SamplingParams()], output_ids=[[1, 2]])
    assert info.penalty_state is None and info.logit_bias is None and info.min_tokens_ban is None


# ------------------------------------------------------------ min tokens
def test_min_new_tokens_bans_eos_and_stop_tokens_until_reached():
    logits = torch.tensor([[9.0, 1.0, 8.0, 7.0, 0.0]] * 3)
    p = SamplingParams(temperature=0.0, min_new_tokens=2, stop_token_ids=[2])
    p_ign = SamplingParams(temperature=0.0, min_new_tokens=2, stop_token_ids=[2], ignore_eos=True)
    info = make_info([p, p, p_ign], output_ids=[[4], [4, 4], [4]], eos_token_ids=[0])
    # row 0: below min -> EOS(0) and 2 banned -> 3; row 1: reached -> 0; row 2: EOS allowed
    assert Sampler()(logits, info).tolist() == [3, 0, 0]


# ----------------------------------------------------------------- seeds
def _run(params_list, row, steps, vocab=30, seed_logits=123, scale=2.0):
    """Decode `steps` steps; request `row` of the batch sees the same logits
    every run; the other rows see different ones."""
    g = torch.Generator().manual_seed(seed_logits)
    gens = [make_generator(p) for p in params_list]
    outs = [[] for _ in params_list]
    sampler = Sampler()
    torch.manual_seed(len(params_list))  # global RNG differs between runs
    for _ in range(steps):
        target = torch.randn(vocab, generator=g) * scale
        logits = torch.randn(len(params_list), vocab) * 2
        logits[row] = target
        info = SamplingBatchInfo.from_params(params_list, outs, gens, vocab, "cpu")
        for i, t in enumerate(sampler(logits, info).tolist()):
            outs[i].append(t)
    return outs[row]


def test_same_seed_same_tokens_in_different_batches():
    a = SamplingParams(temperature=1.0, top_p=0.95, sampling_seed=1234, frequency_penalty=0.3)
    alone = _run([a], 0, 25)
    b = [SamplingParams(top_k=5), SamplingParams(temperature=0.0), a, SamplingParams(min_p=0.2)]
    mixed = _run(b, 2, 25)
    c = [SamplingParams(sampling_seed=9), a]  # a batch without top-p/top-k elsewhere
    other = _run(c, 1, 25)
    assert alone == mixed == other
    assert len(set(alone)) > 3  # really sampling
    d = SamplingParams(temperature=1.0, top_p=0.95, sampling_seed=4321, frequency_penalty=0.3)
    assert _run([d], 0, 25) != alone


def test_seeded_top_k_only_path_is_batch_independent():
    a = SamplingParams(top_k=4, sampling_seed=7)
    assert _run([a], 0, 20) == _run([SamplingParams(top_k=2), a], 1, 20) \
        == _run([SamplingParams(), a], 1, 20)  # topk-width vs full-sort paths


def test_seeded_plain_row_same_with_or_without_sorting_neighbours():
    a = SamplingParams(temperature=0.8, sampling_seed=11)
    alone = _run([a], 0, 20)  # no sort at all
    assert alone == _run([SamplingParams(top_p=0.5), a], 1, 20)  # batch sorts every row
    assert alone == _run([a, SamplingParams(top_k=3)], 0, 20)  # batch takes a top-k


# ------------------------------------------- large vocab: candidate path
def _ref_filter(p, top_k, top_p):
    """Reference: full sort, top-k, top-p over the renormalized top-k mass."""
    vals, idx = p.double().sort(descending=True)
    k = p.numel() if top_k < 0 else top_k
    vals = vals[:k]
    before = vals.cumsum(0) - vals
    keep = idx[:k][before <= top_p * vals.sum()]
    return set(keep.tolist())


@pytest.mark.parametrize("scale,big_k,widths", [
    (8.0, 200, [("topk", 300)]),  # peaked: the first candidates cover top-p
    (0.05, 200, [("topk", 300), ("topk", 4096), ("sort", 6000)]),  # flat: falls back
    (8.0, 5000, [("topk", 5000)]),
])
def test_top_k_top_p_candidates_match_full_sort_reference(scale, big_k, widths, monkeypatch):
    vocab = 6000
    torch.manual_seed(5)
    logits = torch.randn(6, vocab) * scale
    params = [SamplingParams(top_p=0.9), SamplingParams(top_k=300, top_p=0.8),
              SamplingParams(top_k=40), SamplingParams(), SamplingParams(top_p=0.5, temperature=0.7),
              SamplingParams(top_k=big_k, top_p=0.95)]
    info = make_info(params, vocab=vocab)
    probs = torch.softmax(logits / info.temperatures, -1)
    calls = []
    topk, sort = torch.Tensor.topk, torch.Tensor.sort
    monkeypatch.setattr(torch.Tensor, "topk", lambda t, k, **kw: calls.append(("topk", k)) or topk(t, k, **kw))
    monkeypatch.setattr(torch.Tensor, "sort", lambda t, **kw: calls.append(("sort", t.shape[-1])) or sort(t, **kw))
    got = Sampler._top_k_top_p(probs, info)
    monkeypatch.undo()
    assert calls == widths
    for i, p in enumerate(params):
        kept = set(got[i].nonzero().squeeze(1).tolist())
        assert kept == _ref_filter(probs[i], p.top_k, p.top_p), i
        assert torch.equal(got[i][list(kept)], probs[i][list(kept)])  # values untouched
    assert torch.equal(got[3], probs[3])


def test_seeded_row_same_whether_neighbour_forces_full_sort():
    vocab = 3000
    a = SamplingParams(top_p=0.9, sampling_seed=99)
    flat = SamplingParams(top_p=0.99, temperature=50.0)  # needs every candidate width
    alone = _run([a], 0, 15, vocab=vocab, scale=6.0)  # top 256 candidates cover p=0.9
    assert alone == _run([flat, a], 1, 15, vocab=vocab, scale=6.0)
    assert len(set(alone)) > 3


# ---------------------------------------------------------- distribution
def _chi2(counts, probs):
    n = counts.sum()
    exp = probs * n
    return float(((counts - exp) ** 2 / exp).sum())


@pytest.mark.parametrize("seeded", [False, True])
def test_temperature_distribution_chi_square(seeded):
    logits = torch.tensor([1.0, 0.5, 0.0, -1.0])
    n = 4000
    params = [SamplingParams(temperature=0.5, sampling_seed=(i if seeded else None)) for i in range(n)]
    torch.manual_seed(0)
    out = Sampler()(logits.expand(n, -1).clone(), make_info(params, vocab=4))
    counts = torch.bincount(out, minlength=4).double()
    target = torch.softmax(logits.double() / 0.5, -1)
    wrong = torch.softmax(logits.double(), -1)  # temperature ignored
    # df = 3: P(chi2 > 16.27) = 0.001
    assert _chi2(counts, target) < 16.27
    assert _chi2(counts, wrong) > 100


# ---------------------------------------------------------------- errors
def test_shape_errors():
    info = make_info([SamplingParams()] * 2, vocab=5)
    with pytest.raises(ValueError, match="logits"):
        Sampler()(torch.zeros(3, 5), info)
    info.vocab_mask = torch.ones(2, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="vocab_mask"):
        Sampler()(torch.zeros(2, 5), info)
    with pytest.raises(ValueError, match="generators"):
        SamplingBatchInfo.from_params([SamplingParams()], [[]], [], 5)


# -------------------------------------------------------------- logprobs
class _FakeTok:
    def batch_decode(self, ids):
        return ["<%d>" % i[0] for i in ids]


def test_logprobs_and_triples():
    logits = torch.tensor([[0.0, math.log(3.0), 0.0, 0.0], [2.0, 2.0, 2.0, 2.0]])
    lp = compute_logprobs(logits)
    assert lp.dtype == torch.float32
    assert torch.allclose(lp[0], torch.tensor([1 / 6, 3 / 6, 1 / 6, 1 / 6]).log())
    tok = gather_token_logprobs(lp, torch.tensor([1, 3]))
    assert torch.allclose(tok, torch.tensor([math.log(0.5), math.log(0.25)]))
    vals, ids = get_top_logprobs(lp, 2)
    assert ids[0, 0].item() == 1 and vals.shape == (2, 2)
    assert abs(vals[0, 1].item() - math.log(1 / 6)) < 1e-6
    assert get_top_logprobs(lp, 0)[0].shape == (2, 0)
    triples = to_triples(tok, torch.tensor([1, 3]))
    assert [t[1:] for t in triples] == [(1, None), (3, None)]
    assert abs(triples[0][0] - math.log(0.5)) < 1e-6
    top = to_triples(vals, ids, _FakeTok())
    assert len(top) == 2 and len(top[0]) == 2
    assert top[0][0][1:] == (1, "<1>")
    with pytest.raises(ValueError, match="top_logprobs_num"):
        get_top_logprobs(lp, 5)
    with pytest.raises(ValueError):
        to_triples(vals, ids[:, :1])
