"""Metric definitions (docs/science.md §5) on hand-made numbers; expected values computed by hand here."""
from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch

from amnesiac.metrics import memorization, mia, muse, recovery, stats, tofu
from amnesiac.metrics.text import rouge_muse, rouge_tofu

L = math.log


def test_truth_ratio_and_both_aggregations():
    # item 1: P(para)=0.5, perturbed 0.25 and 0.0625 → geometric mean 0.125 → R = 0.25
    # item 2: P(para)=0.1, perturbed 0.2 (one answer) → R = 2
    R = tofu.truth_ratio([L(0.5), L(0.1)], [[L(0.25), L(0.0625)], [L(0.2)]])
    assert R == pytest.approx([0.25, 2.0])
    assert tofu.truth_ratio_forget_agg(R) == pytest.approx((0.25 + 0.5) / 2)  # min(R, 1/R)
    assert tofu.truth_ratio_retain_agg(R) == pytest.approx((0.75 + 0.0) / 2)  # max(0, 1 − R)


def test_probability_plain_and_options_normalised():
    assert tofu.probability([L(0.3)]) == pytest.approx([0.3])
    # P(correct)=0.5, perturbed 0.25 + 0.25 → 0.5 / 1.0; second: 0.2 / (0.2 + 0.6)
    p = tofu.normalized_probability([L(0.5), L(0.2)], [[L(0.25), L(0.25)], [L(0.6)]])
    assert p == pytest.approx([0.5, 0.25])


def test_forget_quality_is_scipy_ks_pvalue_and_invariant_to_inversion():
    from scipy.stats import ks_2samp

    rng = np.random.default_rng(0)
    a, b = rng.lognormal(0, 1, 40), rng.lognormal(0.5, 1, 40)
    fq = tofu.forget_quality(a, b)
    assert fq.value == ks_2samp(a, b).pvalue and fq.higher_is_better
    assert tofu.forget_quality(1 / a, 1 / b).value == pytest.approx(fq.value)
    assert tofu.forget_quality(a, a).value == pytest.approx(1.0)
    # hand: n = m = 2, samples {1,2} vs {3,4}: D = 1, exact two-sided p = 2 / C(4,2) = 1/3
    assert tofu.forget_quality([1, 2], [3, 4]).value == pytest.approx(1 / 3)


def test_harmonic_mean_and_model_utility():
    assert tofu.harmonic_mean([1, 0.5, 0.25]) == pytest.approx(3 / (1 + 2 + 4))
    assert tofu.harmonic_mean([0.3, 0.0]) == 0.0
    full = {k: 0.5 for k in tofu.UTILITY_KEYS}
    mu = tofu.model_utility(full)
    assert mu.value == pytest.approx(0.5) and mu.meta["complete"] and mu.meta["label"] == "harmonic mean of all 9"
    part = tofu.model_utility({"retain/prob": 1.0, "retain/rougeL_recall": 0.5, "retain/truth_ratio": 0.25})
    assert part.value == pytest.approx(3 / 7) and part.meta["label"].startswith("partial: harmonic mean of 3 of 9")
    assert len(part.meta["missing"]) == 6 and not part.meta["complete"]


def test_rouge_variants():
    # TOFU: stemmer, recall. "cats" stems to "cat" → gold fully covered.
    assert rouge_tofu("the cats sat", "the cat sat")["rougeL_recall"] == pytest.approx(1.0)
    # MUSE: no stemmer, F1. LCS("the cats sat", "the cat sat") = "the sat" → P = R = 2/3
    assert rouge_muse("the cats sat", "the cat sat")["rougeL_f1"] == pytest.approx(2 / 3)
    # F1 vs recall: gold "a b", prediction "a b c d": LCS 2, R = 1, P = 1/2, F1 = 2/3
    r = rouge_muse("alpha beta", "alpha beta gamma delta")
    assert r["rougeL_recall"] == pytest.approx(1.0) and r["rougeL_f1"] == pytest.approx(2 / 3)


def test_knowmem_prompt_and_cut_rules():
    p = muse.knowmem_prompt("Who?", [("Q1", "A1"), ("Q2", "A2")])
    assert p == "Question: Q1\nAnswer: A1\n\nQuestion: Q2\nAnswer: A2\n\nQuestion: Who?\nAnswer: "
    assert muse.knowmem_prompt("Who?") == "Question: Who?\nAnswer: "
    assert muse.knowmem_cut("Paris\n\nQuestion: next") == "Paris"
    assert muse.knowmem_cut("Paris\nQuestion: next") == "Paris"
    assert muse.knowmem_cut("Paris Question: next") == "Paris "
    assert muse.knowmem_cut("Paris, France\nsecond line") == "Paris, France\nsecond line"  # single \n stays
    assert muse.knowmem_cut("A\nQuestion\n\nB") == "A"


def test_min_k_and_privleak():
    # Min-40 % of 5 tokens: int(2.0) = 2 smallest (−5, −4) → −mean = 4.5
    assert muse.min_k_score([-1, -2, -3, -4, -5], 0.4) == pytest.approx(4.5)
    assert muse.min_k_score([-2.0], 0.4) == pytest.approx(2.0)  # at least one token
    forget, holdout = [1.0, 2.0, 5.0], [3.0, 4.0, 0.5]  # Min-k scores: higher = less likely
    # AUC = P(holdout looks more likely, i.e. lower Min-k, than forget); brute force over 9 pairs
    pairs = [(f, h) for f in forget for h in holdout]
    brute = sum((h < f) + 0.5 * (h == f) for f, h in pairs) / len(pairs)
    assert muse.privleak_auc(forget, holdout) == pytest.approx(brute)
    r = muse.privleak(0.3, 0.5)
    assert r.value == pytest.approx(-40.0) and r.meta["ideal"] == 0.0


def test_mia_auc_brute_force_and_tpr():
    rng = np.random.default_rng(1)
    m, n = np.round(rng.normal(1, 1, 30), 1), np.round(rng.normal(0, 1, 25), 1)  # rounding makes ties
    brute = np.mean([(a > b) + 0.5 * (a == b) for a in m for b in n])
    assert mia.auc_score(m, n) == pytest.approx(brute)
    # TPR at FPR ≤ 1 %: with 4 non-members any false positive is 25 % FPR, so only thresholds above all
    # non-members count: members above max(non-member)=0.4 are 0.9, 0.8 → TPR 2/4
    assert mia.tpr_at_fpr([0.9, 0.8, 0.3, 0.1], [0.4, 0.2, 0.0, -1.0], 0.01) == pytest.approx(0.5)


def test_mia_scores_sign_convention():
    lp = np.array([-0.5, -1.0, -3.0, -0.1, -2.0])
    assert mia.loss_score(lp) == pytest.approx(-6.6 / 5)
    text = "hello hello hello"
    assert mia.zlib_score(lp, text) == pytest.approx(-6.6 / len(zlib.compress(text.encode())))
    assert mia.mink_score(lp, 0.4) == pytest.approx((-3.0 - 2.0) / 2)  # lowest 2 of 5
    assert mia.reference_score(lp, lp - 1.0) == pytest.approx(1.0)  # model more confident than ref → member
    # a memorised member (high log-probs) scores higher than a non-member under every attack
    mem = {"lp": [np.full(5, -0.1)], "text": ["abc def"], "mu": [np.full(5, -1.0)], "sigma": [np.ones(5)],
           "lp_ref": [np.full(5, -2.0)]}
    non = {"lp": [np.full(5, -3.0)], "text": ["abc def"], "mu": [np.full(5, -1.0)], "sigma": [np.ones(5)],
           "lp_ref": [np.full(5, -2.0)]}
    res = {r.name: r for r in mia.mia_suite(mem, non, 0.2)}
    assert set(res) == {"mia_loss", "mia_zlib", "mia_mink", "mia_minkpp", "mia_ref"}
    assert all(r.value == 1.0 for r in res.values())


def test_minkpp_z_scores_from_logits_by_hand():
    from amnesiac.core.logprobs import token_logprobs

    probs = [0.5, 0.3, 0.2]  # predictive distribution at the one scored position
    logits = torch.log(torch.tensor([[probs, probs]]))  # (B=1, T=2, V=3); position 0 predicts token 1
    ids, mask = torch.tensor([[0, 1]]), torch.tensor([[0, 1]])
    lp, mu, sd = token_logprobs(logits, ids, mask, with_stats=True)
    mu_hand = sum(p * L(p) for p in probs)
    var_hand = sum(p * L(p) ** 2 for p in probs) - mu_hand ** 2
    z_hand = (L(0.3) - mu_hand) / math.sqrt(var_hand)
    assert float(mu[0, 0]) == pytest.approx(mu_hand, rel=1e-5)
    assert float(sd[0, 0]) == pytest.approx(math.sqrt(var_hand), rel=1e-4)
    z = mia.minkpp_z(lp[0].double().numpy(), mu[0].double().numpy(), sd[0].double().numpy())
    assert z[0] == pytest.approx(z_hand, rel=1e-4)
    # Min-K %++ score on hand-made z: z = (lp − mu)/sd = [1, −1, 3, 0]; lowest 50 % = (−1, 0) → −0.5
    assert mia.minkpp_score([0, -2, 2, -1], [-1] * 4, [1] * 4, 0.5) == pytest.approx(-0.5)


def test_exact_memorization_and_extraction_strength():
    assert memorization.exact_memorization([1, 9, 3, 4], [1, 2, 3, 4]) == pytest.approx(0.75)
    assert memorization.extraction_strength([1, 9, 3, 4], [1, 2, 3, 4]) == pytest.approx(1 - 2 / 4)
    assert memorization.extraction_strength([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    assert memorization.extraction_strength([1, 2, 3, 0], [1, 2, 3, 4]) == 0.0
    assert memorization.extraction_strength([0, 2, 3, 4], [1, 2, 3, 4]) == pytest.approx(0.75)


def test_recovery_numbers():
    r = {m.name: m.value for m in recovery.recovery("em", m_target=0.8, m_unlearned=0.2, m_attacked=0.6,
                                                      m_retrained_attacked=0.1)}
    assert r["recovery_ratio"] == pytest.approx(0.6 / 0.8)
    assert r["recovered_fraction"] == pytest.approx(0.4 / 0.6)
    assert r["recovery_ratio_above_floor"] == pytest.approx(0.5 / 0.7)
    assert r["excess_over_floor"] == pytest.approx(0.5)
    assert r["floor_recovery_ratio"] == pytest.approx(0.1 / 0.8)


def test_bootstrap_helpers():
    x = np.arange(20, dtype=float)
    lo, hi = stats.bootstrap_ci(x)
    assert lo < x.mean() < hi
    from scipy.stats import bootstrap

    ref = bootstrap((x,), np.mean, n_resamples=1000, method="percentile", random_state=np.random.default_rng(0))
    assert (lo, hi) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high))
    assert stats.bootstrap_ci([0.5, 0.5]) == (0.5, 0.5)
    p = stats.paired_bootstrap_ci(x, x + 1.0)
    assert p["diff"] == pytest.approx(1.0) and p["low"] == pytest.approx(1.0) and p["p_le_0"] == 0.0


def test_verbmem_gt_cut_counts_bos(tok):
    gt = "Oslo is a city with many companies, among them Veltrix. " * 5
    ids = tok(gt, add_special_tokens=False)["input_ids"]
    assert tok(gt)["input_ids"][0] == tok.bos_token_id  # the tiny tokenizer adds BOS itself, as Llama's
    cut = muse.verbmem_gt_cut(tok, gt, 10)
    assert cut == tok.decode(ids[:9], skip_special_tokens=True, clean_up_tokenization_spaces=True)


def _no_bos_tokenizer(tok):
    """The same vocabulary without the BOS post-processor (as SmolLM2's / GPT-2's tokenizers behave)."""
    import copy

    from tokenizers import processors

    t = copy.deepcopy(tok)
    t.backend_tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return t


def test_no_forced_bos_when_the_tokenizer_adds_none(tok, tiny_model):
    from amnesiac.core.generate import generate_greedy
    from amnesiac.core.logprobs import encode_pairs, special_prefix

    nob = _no_bos_tokenizer(tok)
    assert special_prefix(tok) == [tok.bos_token_id] and special_prefix(nob) == []
    gt = "Oslo is a city with many companies, among them Veltrix. " * 5
    ids = nob(gt, add_special_tokens=False)["input_ids"]
    # VerbMem's cut: 10 ids of the text itself (no BOS among them)
    assert muse.verbmem_gt_cut(nob, gt, 10) == nob.decode(ids[:10], skip_special_tokens=True)
    (seq, start), = encode_pairs(nob, ["Question: a\nAnswer:"], [" b"])
    assert seq[0] != tok.bos_token_id and seq == nob("Question: a\nAnswer: b", add_special_tokens=True)["input_ids"][:len(seq)]
    (seq_b, _), = encode_pairs(tok, ["Question: a\nAnswer:"], [" b"])
    assert seq_b == [tok.bos_token_id] + seq
    # generation conditions on exactly those ids: equal to a manual greedy loop on the un-prefixed prompt
    import torch

    p = "Question: a\nAnswer:"
    ids_p = torch.tensor([nob(p)["input_ids"]])
    with torch.no_grad():
        for _ in range(3):
            nxt = tiny_model(input_ids=ids_p).logits[0, -1].argmax()
            ids_p = torch.cat([ids_p, nxt.view(1, 1)], 1)
    _, gen = generate_greedy(tiny_model, nob, [p], max_new_tokens=3, return_ids=True)
    assert gen[0][:3] == ids_p[0, -3:].tolist()[: len(gen[0][:3])]
