"""The shared core: log-probs against a hand computation, batched generation against one-at-a-time."""
import math

import numpy as np

import torch

from amnesiac.core import generate_greedy, score_pairs, score_texts, token_logprobs
from amnesiac.core.logprobs import encode_pairs


def test_token_logprobs_hand_case():
    # B=1, T=3, V=2: positions 0 and 1 predict tokens 1 and 2 (only token 2 is a scored continuation).
    logits = torch.tensor([[[0.0, math.log(3.0)], [math.log(4.0), 0.0], [0.0, 0.0]]])
    ids = torch.tensor([[0, 1, 0]])
    mask = torch.tensor([[0, 1, 1]])
    lp = token_logprobs(logits, ids, mask)
    # p(x1=1 | x0) = 3/4 ; p(x2=0 | x<2) = 4/5
    assert torch.allclose(lp, torch.tensor([[math.log(0.75), math.log(0.8)]], dtype=lp.dtype))
    mask2 = torch.tensor([[0, 0, 1]])
    assert torch.allclose(token_logprobs(logits, ids, mask2), torch.tensor([[0.0, math.log(0.8)]]))
    lp, mu, sd = token_logprobs(logits, ids, mask, with_stats=True)
    p = torch.tensor([0.25, 0.75])
    mu0 = (p * p.log()).sum()
    assert torch.allclose(mu[0, 0], mu0)
    assert torch.allclose(sd[0, 0], ((p * p.log() ** 2).sum() - mu0 ** 2).sqrt())


def test_score_pairs_matches_manual_forward(tiny_model, tok):
    prompts = ["Question: Where?\nAnswer:", "Hello"]
    conts = [" Lisbon", " world of tests"]
    sc = score_pairs(tiny_model, tok, prompts, conts, batch_size=2)
    for i, (p, c) in enumerate(zip(prompts, conts)):
        ids, start = encode_pairs(tok, [p], [c])[0]
        with torch.no_grad():
            logp = torch.log_softmax(tiny_model(torch.tensor([ids])).logits[0].float(), -1)
        manual = [logp[t - 1, ids[t]].item() for t in range(start, len(ids))]
        assert sc.token_ids[i] == ids[start:]
        assert len(sc.token_logprobs[i]) == len(manual)
        assert max(abs(a - b) for a, b in zip(sc.token_logprobs[i], manual)) < 1e-5
    # batching and ordering do not change numbers
    single = [score_pairs(tiny_model, tok, [p], [c]).sum[0] for p, c in zip(prompts, conts)]
    assert abs(sc.sum[0] - single[0]) < 1e-4 and abs(sc.sum[1] - single[1]) < 1e-4


def test_score_texts_scores_every_token_after_bos(tiny_model, tok):
    sc = score_texts(tiny_model, tok, ["one two three", "four"])
    assert sc.lengths.tolist() == [len(tok("one two three", add_special_tokens=False)["input_ids"]),
                                   len(tok("four", add_special_tokens=False)["input_ids"])]


def test_batched_generation_equals_unbatched(trained_tiny, tok, qa_people):
    from amnesiac.data import qa_prompt

    prompts = [qa_prompt(it.question) for it in qa_people["retain"][:12]] + ["Hi", "Question: Who is Nobody Atall?\nAnswer:"]
    batched = generate_greedy(trained_tiny, tok, prompts, max_new_tokens=8, batch_size=5, return_ids=True)
    for i, p in enumerate(prompts):
        one = generate_greedy(trained_tiny, tok, [p], max_new_tokens=8, batch_size=1, return_ids=True)
        assert one[1][0] == batched[1][i], p
        assert one[0][0] == batched[0][i]


def test_generation_matches_hf_generate(trained_tiny, tok, qa_people):
    from amnesiac.data import qa_prompt

    p = qa_prompt(qa_people["forget"][0].question)
    ids = [tok.bos_token_id] + tok(p, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        hf = trained_tiny.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False,
                                   pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)[0, len(ids):].tolist()
    ours = generate_greedy(trained_tiny, tok, [p], max_new_tokens=6, return_ids=True)[1][0]
    assert ours == hf[: len(ours)]


def test_stop_strings_cut_output(trained_tiny, tok, qa_people):
    from amnesiac.data import qa_prompt

    out = generate_greedy(trained_tiny, tok, [qa_prompt(qa_people["retain"][0].question)], max_new_tokens=12,
                          stop_strings=["\n"])
    assert "\n" not in out[0]


def test_content_key_follows_content_not_path(tmp_path, monkeypatch):
    import os

    from amnesiac.io import content_key

    monkeypatch.setenv("AMNESIAC_HOME", str(tmp_path / "home"))
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "config.json").write_text('{"x": 1}')
        (d / "model.safetensors").write_bytes(b"weights")
        (d / "unlearn.json").write_text("log")
    assert content_key(a) == content_key(b)
    (b / "unlearn.json").write_text("another log")  # logs do not identify the model
    assert content_key(a) == content_key(b)
    (b / "model.safetensors").write_bytes(b"weights2")  # same path, new content → new key
    os.utime(b / "model.safetensors", ns=(1, 1))
    assert content_key(a) != content_key(b)
    assert (tmp_path / "home" / "digests.json").exists()


def test_chunked_logprobs_equal_full_softmax_and_keep_gradients(monkeypatch):
    import torch

    from amnesiac.core import logprobs as L

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g, requires_grad=True)
    ids = torch.randint(0, 11, (3, 7), generator=g)
    mask = (torch.rand(3, 7, generator=g) > 0.3).long()
    monkeypatch.setattr(L, "LOGSOFTMAX_CHUNK", 2)  # several chunks
    lp, mu, sd = L.token_logprobs(logits, ids, mask, with_stats=True)
    ref = torch.log_softmax(logits[:, :-1].float(), -1)
    want = ref.gather(-1, ids[:, 1:, None]).squeeze(-1) * mask[:, 1:]
    assert torch.allclose(lp, want, atol=1e-6)
    p = ref.exp()
    want_mu = (p * ref).sum(-1) * mask[:, 1:]
    assert torch.allclose(mu, want_mu, atol=1e-6)
    lp.sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_scoring_splits_batches_to_the_logit_budget(tiny_model, tok, monkeypatch):
    from amnesiac.core import logprobs as L

    texts = ["one two three four five six", "four", "seven eight nine"]
    full = L.score_texts(tiny_model, tok, texts, batch_size=3)
    monkeypatch.setattr(L, "LOGIT_BUDGET_BYTES", 1)  # one row per forward pass
    calls = []
    orig = tiny_model.forward

    def counting(*a, **k):
        calls.append(1)
        return orig(*a, **k)

    monkeypatch.setattr(tiny_model, "forward", counting)
    cut = L.score_texts(tiny_model, tok, texts, batch_size=3)
    assert len(calls) == 3
    for a, b in zip(full.token_logprobs, cut.token_logprobs):
        assert np.allclose(a, b, atol=1e-5)
