import json

import pytest

from amnesiac.data import DataError, bios, load_dataset, load_qa_jsonl, load_text_jsonl, load_verbmem_jsonl
from amnesiac.data.sources import build_bios


def test_generator_is_deterministic():
    a = bios.generate(n_people=30, n_pretrain_people=40, seed=5)
    b = bios.generate(n_people=30, n_pretrain_people=40, seed=5)
    c = bios.generate(n_people=30, n_pretrain_people=40, seed=6)
    assert [(p.name, p.attrs) for p in a["people"]] == [(p.name, p.attrs) for p in b["people"]]
    assert [p.name for p in a["people"]] != [p.name for p in c["people"]]


def test_names_unique_across_members_holdout_and_pretraining():
    g = bios.generate(n_people=100, n_pretrain_people=500, seed=0)
    names = [p.name for k in ("people", "holdout", "pretrain") for p in g[k]]
    assert len(names) == len(set(names)) == 100 + 10 + 500
    assert all(len(p.attrs) >= 6 for p in g["people"])


def test_qa_items_have_tofu_fields():
    g = bios.generate(n_people=10, n_pretrain_people=0, seed=0)
    import random

    items = bios.qa_items(g["people"][0], random.Random(0))
    assert len(items) == len(bios.ATTRIBUTES)
    for it in items:
        assert len(it.paraphrased_questions) >= 2
        assert len(it.perturbed_answers) >= 3
        assert it.answer in it.paraphrased_answer
        assert all(it.answer not in p.replace(it.person, "") for p in it.perturbed_answers)
        d = it.to_json()
        assert {"question", "answer", "paraphrased_question", "paraphrased_answer", "perturbed_answer",
                "person", "attribute"} <= set(d)


def test_splits_are_by_person_and_disjoint(tmp_path):
    out = build_bios({"n_people": 40, "n_pretrain_people": 10, "seed": 1}, out=tmp_path / "b")
    for pct, n_forget in ((1, 1), (5, 2), (10, 4)):
        f = load_qa_jsonl(out / f"forget{pct:02d}.jsonl")
        r = load_qa_jsonl(out / f"retain{100 - pct}.jsonl")
        h = load_qa_jsonl(out / f"holdout{pct:02d}.jsonl")
        fp, rp, hp = ({it.person for it in s} for s in (f, r, h))
        assert len(fp) == n_forget and len(rp) == 40 - n_forget
        assert not (fp & rp) and not (fp & hp) and not (rp & hp)
        assert len(f) == n_forget * len(bios.ATTRIBUTES)
    f05 = {it.person for it in load_qa_jsonl(out / "forget05.jsonl")}
    f10 = {it.person for it in load_qa_jsonl(out / "forget10.jsonl")}
    assert f05 <= f10  # nested like TOFU
    texts = load_text_jsonl(out / "forget10_text.jsonl")
    assert len(texts) == 4 and all(isinstance(t, str) and t for t in texts)


def test_load_dataset_specs():
    from amnesiac.data.sources import BIOS_DEFAULT

    items = load_dataset("bios:forget10")
    assert len(items) == BIOS_DEFAULT["n_people"] // 10 * len(bios.ATTRIBUTES)
    with pytest.raises(DataError, match="available"):
        load_dataset("bios:nosuchsplit")
    with pytest.raises(DataError, match="unknown data source"):
        load_dataset("nope:forget10")


def test_tofu_loader_reads_packaged_copy(monkeypatch):
    monkeypatch.delenv("AMNESIAC_TOFU_DIR", raising=False)
    f = load_dataset("tofu:forget10")
    assert len(f) == 400 and len(f[0].perturbed_answers) == 5 and f[0].paraphrased_answer
    ra = load_dataset("tofu:real_authors")
    assert len(ra) == 100


def _write(p, lines):
    p.write_text("\n".join(lines) + "\n")
    return p


def test_loader_errors_name_file_line_and_field(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_qa_jsonl(tmp_path / "missing.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="empty file"):
        load_qa_jsonl(empty)
    p = _write(tmp_path / "a.jsonl", [json.dumps({"question": "q", "answer": "a"}), json.dumps({"question": "q2"})])
    with pytest.raises(DataError, match=r"a\.jsonl:2: missing field 'answer'"):
        load_qa_jsonl(p)
    p = _write(tmp_path / "b.jsonl", [json.dumps({"question": "q", "answer": 3})])
    with pytest.raises(DataError, match=r"b\.jsonl:1: field 'answer' must be a string"):
        load_qa_jsonl(p)
    p = _write(tmp_path / "c.jsonl", ['{"question": "q", "answer": '])
    with pytest.raises(DataError, match=r"c\.jsonl:1: not valid JSON"):
        load_qa_jsonl(p)
    p = _write(tmp_path / "d.jsonl", [json.dumps({"prompt": "p"})])
    with pytest.raises(DataError, match="missing field 'gt'"):
        load_verbmem_jsonl(p)
    p = _write(tmp_path / "e.jsonl", [json.dumps({"question": "q", "answer": "a", "perturbed_answer": [1]})])
    with pytest.raises(DataError, match="perturbed_answer"):
        load_qa_jsonl(p)


def test_generic_jsonl_qa_and_text(tmp_path):
    p = _write(tmp_path / "qa.jsonl", [json.dumps({"question": "Who?", "answer": "Me", "source": "x"})])
    it = load_dataset(str(p))[0]
    assert it.question == "Who?" and it.extra == {"source": "x"}
    t = _write(tmp_path / "t.jsonl", [json.dumps({"text": "hello world"})])
    assert load_dataset(str(t)) == ["hello world"]


def test_dataset_slices_take_records_in_file_order(tmp_path):
    full = load_dataset("tofu:forget01")
    assert len(full) == 40
    assert load_dataset("tofu:forget01[:4]") == full[:4]
    assert load_dataset("tofu:forget01[38:]") == full[38:]
    assert load_dataset("tofu:forget01[2:5]") == full[2:5]
    p = tmp_path / "qa.jsonl"
    p.write_text("".join(json.dumps({"question": f"q{i}?", "answer": f"a{i}"}) + "\n" for i in range(5)))
    assert [it.answer for it in load_dataset(f"{p}[1:3]")] == ["a1", "a2"]
    with pytest.raises(DataError, match=r"slice \[40:\] of tofu:forget01 \(40 records\) is empty"):
        load_dataset("tofu:forget01[40:]")
    odd = tmp_path / "odd[1:2].jsonl"  # a file whose name looks like a slice is read whole
    odd.write_text(p.read_text())
    assert len(load_dataset(str(odd))) == 5
