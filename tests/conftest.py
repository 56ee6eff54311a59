"""Shared fixtures: a locally trained tokenizer, random tiny Llamas, and one tiny model that has
memorised a few fictitious people (trained in-process, seconds on CPU)."""
from __future__ import annotations

import random

import pytest
import torch

# One intra-op thread: the tiny models gain nothing from more, and on a busy machine OpenMP threads
# oversubscribe the cores (a forward pass measured 10x slower with 2 threads under load).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Every test gets a private $AMNESIAC_HOME so nothing leaks between tests or into ~/.cache."""
    monkeypatch.setenv("AMNESIAC_HOME", str(tmp_path_factory.getbasetemp() / "amnesiac_home"))


@pytest.fixture(scope="session")
def small_bios():
    from amnesiac.data import bios

    return bios.generate(n_people=20, n_pretrain_people=30, seed=123)


@pytest.fixture(scope="session")
def tok(small_bios):
    from amnesiac.data import bios
    from amnesiac.models.tokenizer import train_tokenizer

    rng = random.Random(0)
    people = small_bios["people"] + small_bios["holdout"] + small_bios["pretrain"]
    corpus = [bios.biography(p, rng) for p in people for _ in range(2)]
    corpus += [f"Question: {it.question}\nAnswer: {it.answer}" for p in people for it in bios.qa_items(p, rng)]
    corpus += bios.filler_sentences(rng, 300)
    return train_tokenizer(corpus, vocab_size=600)


def make_tiny(tok, seed: int = 0, hidden: int = 32, layers: int = 2, heads: int = 2, inter: int = 64):
    from amnesiac.models.tiny import build_llama

    torch.manual_seed(seed)
    m = build_llama(dict(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads), tok)
    return m.eval()


@pytest.fixture
def tiny_model(tok):
    return make_tiny(tok)


@pytest.fixture(scope="session")
def qa_people(small_bios):
    """QA items of the 20 small-bios people: forget = last 2 people, retain = the other 18."""
    from amnesiac.data import bios

    rng = random.Random(1)
    items = {p.name: bios.qa_items(p, rng) for p in small_bios["people"] + small_bios["holdout"]}
    ppl = small_bios["people"]
    return {
        "forget": [it for p in ppl[-2:] for it in items[p.name]],
        "retain": [it for p in ppl[:-2] for it in items[p.name]],
        "holdout": [it for p in small_bios["holdout"] for it in items[p.name]],
    }


@pytest.fixture(scope="session")
def trained_tiny(tok, qa_people):
    """A tiny Llama trained until it answers its 20 people's questions (forget + retain)."""
    from amnesiac.core.logprobs import encode_pairs
    from amnesiac.data import qa_answer, qa_prompt
    from amnesiac.models.train import train_lm

    model = make_tiny(tok, seed=1, hidden=64, layers=2, heads=4, inter=128)
    items = qa_people["forget"] + qa_people["retain"]
    ex = encode_pairs(tok, [qa_prompt(it.question) for it in items], [qa_answer(it.answer) + tok.eos_token for it in items])
    train_lm(model, ex, tok.pad_token_id, epochs=60, lr=5e-3, batch_size=16, warmup=10, seed=0, schedule="constant")
    return model
