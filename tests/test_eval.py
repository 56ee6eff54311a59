"""The evaluator and `amnesiac eval` on tiny models (CPU, seconds)."""
from __future__ import annotations

import copy
import json

import pytest

from amnesiac.evaluate import EvalConfig, EvalData, evaluate, resolve_data, retrained_reference


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: on a shared 2-core box, 2 OpenMP threads spin against other jobs (measured 10×
    slower on this module); restored afterwards so other modules keep their setting."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def mem_model(tok, qa_people):
    """A small Llama that memorises forget + 24 retain items (≈ 150 steps): cheap enough for this module."""
    from amnesiac.core.logprobs import encode_pairs
    from amnesiac.data import qa_answer, qa_prompt
    from amnesiac.models.train import train_lm

    from conftest import make_tiny

    model = make_tiny(tok, seed=1, hidden=64, layers=2, heads=4, inter=128)
    items = qa_people["forget"] + qa_people["retain"][:24]
    ex = encode_pairs(tok, [qa_prompt(it.question) for it in items], [qa_answer(it.answer) + tok.eos_token for it in items])
    train_lm(model, ex, tok.pad_token_id, epochs=50, lr=5e-3, batch_size=12, warmup=10, seed=0, schedule="constant")
    return model.eval()


def _data(qa_people, texts=True):
    f, r, h = qa_people["forget"], qa_people["retain"][:24], qa_people["holdout"]
    d = EvalData(forget=f, retain=r, holdout=h)
    if texts:
        d.forget_text = [f"{it.question} {it.answer}" for it in f]
        d.holdout_text = [f"{it.question} {it.answer}" for it in h]
    return d


def test_evaluate_all_metric_families(mem_model, tok, qa_people):
    d = _data(qa_people)
    ref = retrained_reference(mem_model, tok, d, EvalConfig(cache=False))
    res = evaluate(mem_model, tok, d, EvalConfig(cache=False), retrained=ref, reference=(mem_model, tok))
    for k in ("forget/exact_match", "forget/prob", "forget/truth_ratio", "forget/rougeL_recall",
              "forget/extraction_strength", "forget/exact_memorization", "retain/prob", "holdout/prob",
              "forget_quality", "model_utility", "mia_loss", "mia_zlib", "mia_mink", "mia_minkpp",
              "mia_ref", "privleak", "privleak_auc"):
        assert k in res, k
    assert all(isinstance(m.higher_is_better, bool) for m in res.values())
    assert res["forget/exact_match"].value > 0.8  # the model memorised its people
    assert res["forget/exact_match"].higher_is_better is False and res["retain/prob"].higher_is_better
    # unlearned == retrained → identical per-item truth ratios → KS p-value 1, PrivLeak 0
    assert res["forget_quality"].value == pytest.approx(1.0)
    assert res["privleak"].value == pytest.approx(0.0)
    assert res["mia_ref"].value == pytest.approx(0.5)  # the model is its own reference: no signal
    # no real_authors / world_facts here
    assert res["model_utility"].meta["missing"] and not res["model_utility"].meta["complete"]


def test_model_utility_falls_when_retain_answers_corrupted(mem_model, tok, qa_people):
    d = EvalData(retain=qa_people["retain"][:24])
    good = evaluate(mem_model, tok, d, EvalConfig(cache=False))
    bad_items = []
    for i, it in enumerate(d.retain):  # swap every answer (and its paraphrase) for the perturbed one
        b = copy.deepcopy(it)
        b.answer = d.retain[(i + 6) % len(d.retain)].answer
        b.paraphrased_answer, b.perturbed_answers = it.perturbed_answers[0], [it.paraphrased_answer] + it.perturbed_answers[1:]
        bad_items.append(b)
    bad = evaluate(mem_model, tok, EvalData(retain=bad_items), EvalConfig(cache=False))
    k = "model_utility"
    assert bad[k].value < good[k].value - 0.2
    for m in ("retain/prob", "retain/truth_ratio", "retain/rougeL_recall"):
        assert bad[m].value < good[m].value


def test_batched_equals_unbatched(mem_model, tok, qa_people):
    d = _data(qa_people)
    a = evaluate(mem_model, tok, d, EvalConfig(cache=False, batch_size=1))
    b = evaluate(mem_model, tok, d, EvalConfig(cache=False, batch_size=64))
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].value == pytest.approx(b[k].value, abs=1e-6), k
        if "outputs" in a[k].meta:
            assert a[k].meta["outputs"] == b[k].meta["outputs"], k


def test_cache_resumes_and_matches(mem_model, tok, qa_people, tmp_path, monkeypatch):
    monkeypatch.setenv("AMNESIAC_HOME", str(tmp_path / "home"))
    d = _data(qa_people, texts=False)
    first = evaluate(mem_model, tok, d, EvalConfig())
    files = sorted((tmp_path / "home" / "cache").rglob("*.jsonl"))
    assert files
    # simulate a crash: cut the last line of one cache file in half
    f = files[0]
    lines = f.read_text().splitlines()
    f.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    second = evaluate(mem_model, tok, d, EvalConfig())
    for k in first:
        assert second[k].value == pytest.approx(first[k].value, abs=1e-12), k


def test_muse_layout_metrics(mem_model, tok, qa_people, tmp_path):
    root = tmp_path / "news"
    f, h = qa_people["forget"], qa_people["holdout"]
    (root / "verbmem").mkdir(parents=True)
    (root / "knowmem").mkdir()
    (root / "privleak").mkdir()
    (root / "verbmem" / "forget.json").write_text(json.dumps(
        [{"prompt": f"Question: {it.question}\nAnswer:", "gt": " " + it.answer} for it in f]))
    qa = [{"question": it.question, "answer": it.answer} for it in f]
    for side in ("forget", "retain"):
        (root / "knowmem" / f"{side}_qa.json").write_text(json.dumps(qa[2:]))
        (root / "knowmem" / f"{side}_qa_icl.json").write_text(json.dumps(qa[:2]))
    (root / "privleak" / "forget.json").write_text(json.dumps([f"{it.question} {it.answer}" for it in f]))
    (root / "privleak" / "holdout.jsonl").write_text("".join(json.dumps({"text": f"{it.question} {it.answer}"}) + "\n" for it in h))
    d = resolve_data(f"muse:{root}")
    assert len(d.verbmem) == len(f) and len(d.knowmem_forget) == len(f) - 2 and len(d.knowmem_forget_icl) == 2
    res = evaluate(mem_model, tok, d, EvalConfig(cache=False, privleak_ref_auc=0.5))
    assert {"verbmem", "knowmem_forget", "knowmem_retain", "privleak", "mia_minkpp"} <= set(res)
    assert res["verbmem"].value > 0.5  # it memorised these answers
    assert res["privleak"].value == pytest.approx((res["privleak_auc"].value - 0.5) / 0.5 * 100)
    assert res["knowmem_forget"].meta["outputs"] and all("\n\n" not in o for o in res["knowmem_forget"].meta["outputs"])


def test_eval_cli_writes_summary_and_per_example(mem_model, tok, qa_people, tmp_path):
    from typer.testing import CliRunner

    from amnesiac.cli import app
    from amnesiac.io import write_jsonl
    from amnesiac.models import save_model

    mdir = save_model(mem_model, tok, tmp_path / "model")
    write_jsonl(tmp_path / "forget.jsonl", [it.to_json() for it in qa_people["forget"]])
    write_jsonl(tmp_path / "retain.jsonl", [it.to_json() for it in qa_people["retain"][:12]])
    write_jsonl(tmp_path / "holdout.jsonl", [it.to_json() for it in qa_people["holdout"]])
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["eval", "--model", str(mdir), "--data", str(tmp_path / "forget.jsonl"),
                                 "--retain", str(tmp_path / "retain.jsonl"), "--holdout", str(tmp_path / "holdout.jsonl"),
                                 "--retrained", str(mdir), "--out", str(out), "--device", "cpu", "--no-progress"])
    assert r.exit_code == 0, r.output
    s = json.loads((out / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert s["metrics"]["forget_quality"]["value"] == pytest.approx(1.0)
    assert {"seed", "versions", "model", "data_hashes", "model_hash"} <= set(s["meta"])
    rows = [json.loads(x) for x in (out / "per_example.jsonl").read_text().splitlines()]
    fem = [x for x in rows if x["metric"] == "forget/exact_match"]
    assert len(fem) == len(qa_people["forget"]) and "output" in fem[0]
    assert (out / "retrained_reference.json").exists()
    # reusing the stored reference gives the same forget quality
    r2 = CliRunner().invoke(app, ["eval", "--model", str(mdir), "--data", str(tmp_path / "forget.jsonl"), "--retain", "none",
                                  "--retrained", str(out / "retrained_reference.json"), "--out", str(tmp_path / "o2"),
                                  "--device", "cpu", "--no-progress"])
    assert r2.exit_code == 0, r2.output
    assert json.loads((tmp_path / "o2" / "summary.json").read_text())["metrics"]["forget_quality"]["value"] == pytest.approx(1.0)


def test_eval_runs_every_registered_metric(mem_model, tok, qa_people, tmp_path):
    """A metric registered with an eval hook (one file's worth: the function, @register, @evaluates) shows up in
    `amnesiac eval` without touching evaluate.py; the registry is restored afterwards."""
    from typer.testing import CliRunner

    from amnesiac.cli import app
    from amnesiac.evaluate import evaluated_metrics
    from amnesiac.io import write_jsonl
    from amnesiac.metrics.base import MetricResult, evaluates
    from amnesiac.models import save_model
    from amnesiac.registry import register, registry

    def toy_forget_count(items):
        """toy: the number of forget items"""
        return MetricResult("toy_forget_count", float(len(items)), [], True, {"n": len(items)})

    @evaluates(toy_forget_count)
    def _hook(ctx):
        if "forget" in ctx.qa:
            yield toy_forget_count(ctx.qa["forget"][0])

    mdir = save_model(mem_model, tok, tmp_path / "model")
    write_jsonl(tmp_path / "forget.jsonl", [it.to_json() for it in qa_people["forget"]])
    register("metrics", "toy_forget_count")(toy_forget_count)
    try:
        assert evaluated_metrics()[-1] is toy_forget_count  # default order: after the built-in ones
        r = CliRunner().invoke(app, ["eval", "--model", str(mdir), "--data", str(tmp_path / "forget.jsonl"), "--retain",
                                     "none", "--out", str(tmp_path / "out"), "--device", "cpu", "--no-progress"],
                               env={"COLUMNS": "200"})
        assert r.exit_code == 0, r.output
        assert "toy_forget_count" in r.output
        s = json.loads((tmp_path / "out" / "summary.json").read_text())
        assert s["metrics"]["toy_forget_count"]["value"] == len(qa_people["forget"])
        assert "forget/exact_match" in s["metrics"]  # the built-in ones still run
    finally:
        registry("metrics").pop("toy_forget_count", None)
    assert toy_forget_count not in evaluated_metrics()


def test_qa_metric_functions_still_work(mem_model, tok, qa_people):
    from amnesiac.metrics.qa import answer_prob, exact_match_recall, rouge_recall

    items = qa_people["forget"]
    assert exact_match_recall(mem_model, tok, items).value > 0.8
    assert rouge_recall(mem_model, tok, items).value > 0.8
    assert answer_prob(mem_model, tok, items).value > 0.5


def test_muse_file_names_as_shipped_and_known_retrained_auc(mem_model, tok, qa_people, tmp_path):
    """MUSE ships retain splits as retain2 (knowmem/retain2_qa.json, retain2_qa_icl.json, privleak/retain2.json);
    a folder named news uses the published AUC(θ_r) 0.4772 when no retrained model is given."""
    root = tmp_path / "news"
    f, h = qa_people["forget"], qa_people["holdout"]
    (root / "knowmem").mkdir(parents=True)
    (root / "privleak").mkdir()
    qa = [{"question": it.question, "answer": it.answer} for it in f]
    (root / "knowmem" / "forget_qa.json").write_text(json.dumps(qa[2:]))
    (root / "knowmem" / "forget_qa_icl.json").write_text(json.dumps(qa[:2]))
    (root / "knowmem" / "retain2_qa.json").write_text(json.dumps(qa[3:]))
    (root / "knowmem" / "retain2_qa_icl.json").write_text(json.dumps(qa[:3]))
    (root / "privleak" / "forget.json").write_text(json.dumps([f"{it.question} {it.answer}" for it in f]))
    (root / "privleak" / "retain2.json").write_text(json.dumps([f"{it.question} {it.answer}" for it in h]))
    (root / "privleak" / "holdout.json").write_text(json.dumps([f"{it.question} {it.answer}" for it in h]))
    d = resolve_data(f"muse:{root}")
    assert len(d.knowmem_retain) == len(f) - 3 and len(d.knowmem_retain_icl) == 3
    assert d.sources["knowmem_retain"].endswith("retain2_qa.json") and d.privleak_ref[0] == 0.4772
    res = evaluate(mem_model, tok, d, EvalConfig(cache=False))
    assert "knowmem_retain" in res and res["privleak"].meta["auc_retrained"] == 0.4772
    assert res["privleak"].value == pytest.approx((res["privleak_auc"].value - 0.4772) / 0.4772 * 100)
    assert "published" in res["privleak"].meta["auc_retrained_source"]
