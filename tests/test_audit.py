"""Audit: summary schema, resume and content-keyed cache, scoring that follows the data (tiny models).
The verdict rule itself is tested on hand-made numbers in test_verdict.py."""
import copy
import json

import pytest

from amnesiac.audit import Audit, AuditConfig


def test_unknown_attack_lists_available():
    with pytest.raises(ValueError, match="available"):
        AuditConfig(attacks=["nope"]).attack_list()


@pytest.fixture(scope="module")
def audit_models(tmp_path_factory, trained_tiny, tok, qa_people):
    """target = trained tiny model; unlearned = its copy after a few GA steps; retrained = a copy whose
    forget answers were disturbed harder (stands in for a never-trained model)."""
    from amnesiac.models import save_model
    from amnesiac.unlearn import unlearn

    d = tmp_path_factory.mktemp("audit_models")
    save_model(trained_tiny, tok, d / "target")
    unlearn(copy.deepcopy(trained_tiny), qa_people["forget"], qa_people["retain"], tokenizer=tok, out=d / "unlearned",
            method="ga_gdr", lr=3e-3, max_steps=6, batch_size=4, progress=False, device="cpu")
    unlearn(copy.deepcopy(trained_tiny), qa_people["forget"], qa_people["retain"], tokenizer=tok, out=d / "retrained",
            method="ga_gdr", lr=1e-2, max_steps=10, batch_size=4, progress=False, device="cpu", seed=1)
    return d


def test_audit_summary_schema_and_resume(audit_models, qa_people, tmp_path):
    from amnesiac.report.audit_report import write_audit_report

    cfg = AuditConfig(attacks=["fp", "rtn8", "rtn4_g64", "paraphrase"], n_boot=500, max_retain=40, mia=True)
    out = tmp_path / "a"
    a = Audit(str(audit_models / "target"), str(audit_models / "unlearned"), qa_people["forget"], qa_people["retain"],
              out, retrained=str(audit_models / "retrained"), holdout=qa_people["holdout"], config=cfg)
    s1 = a.run()
    assert s1["verdict"]["verdict"] in ("PASS", "FAIL", "INCONCLUSIVE") and s1["verdict"]["reason"]
    assert s1["scoring"]["metric"] == "exact_match" == s1["verdict"]["metric"]  # bios answers are a few words
    assert set(s1["results"]) == {"target", "unlearned", "retrained"}
    assert [r["attack"] for r in s1["recovery"]] == ["fp", "rtn8", "rtn4_g64", "paraphrase"]
    for r in s1["recovery"][1:]:
        assert {"value", "value_ci", "recovery_ratio", "excess", "excess_ci", "gain_over_fp", "p", "p_holm",
                "significant", "floor_value"} <= set(r)
    assert {"exact_match", "rougeL_recall", "prob"} <= set(s1["recovery"][2]["all_metrics"])
    assert s1["recovery"][2]["all_metrics"]["prob"]["vs"] == "retrained"
    # every applicable metric, with a CI, for every model and attack
    assert {"forget_exact_match", "forget_rougeL_recall", "forget_prob", "retain_exact_match"} <= set(
        s1["results"]["unlearned"]["rtn8"])
    assert 0.0 <= s1["collapse"]["rtn4_g64"]["overall"]["collapse_rate"] <= 1.0
    assert (out / "per_example.jsonl").exists() and (out / "summary.json").exists()
    lines = (out / "per_example.jsonl").read_text().splitlines()
    assert len(lines) == 3 * 4 * len(qa_people["forget"])
    # resume: a second run reads every (model, attack) from the cache and gives the same numbers
    cached = sorted(p.name for p in (out / "cache").iterdir() if "__" in p.name)
    assert len(cached) == 12 and (out / "cache" / "collapse.json").exists()
    s2 = Audit(str(audit_models / "target"), str(audit_models / "unlearned"), qa_people["forget"], qa_people["retain"],
               out, retrained=str(audit_models / "retrained"), config=cfg).run()
    def drop(s):
        return json.dumps({k: v for k, v in s.items() if k not in ("wall_s", "costs", "mia")}, sort_keys=True)

    assert drop(s1) == drop(s2)
    paths = write_audit_report(s1, out)
    html = paths["html"].read_text()
    assert "data:image/png;base64," in html and s1["verdict"]["verdict"] in html
    assert set(s1["mia"]) == {"target", "unlearned", "retrained"} and "MIA" in html  # the ROC figure renders
    # the terminal table: one line per attack however narrow the console, empty columns left out
    from rich.console import Console

    from amnesiac.report.audit_report import print_audit

    con = Console(record=True, width=240)
    print_audit({**s1, "recovery": [{**r, "floor_value": None, "excess": None, "excess_ci": None}
                                    for r in s1["recovery"]]}, con)
    text = con.export_text()
    assert "retrained" not in text.split("\n")[2] and "excess" not in text  # the header row, no floor columns
    fp = s1["recovery"][0]
    assert f"target {fp['target_fp']:.3f} → unlearned {fp['value']:.3f}" in text
    assert sum(line.startswith("│ rtn4_g64 ") for line in text.splitlines()) == 1


def test_audit_rejects_empty_forget(audit_models, qa_people, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        Audit(str(audit_models / "target"), str(audit_models / "unlearned"), [], qa_people["retain"], tmp_path).run()


def test_reunlearning_into_the_same_folder_invalidates_the_cache(audit_models, qa_people, tmp_path, trained_tiny, tok):
    """The cache is keyed by what the model *is*: replace U at the same path by the target itself, rerun into
    the same --out, and the new numbers (U = T) are measured; the report does not crash on U = T."""
    import shutil

    from amnesiac.models import save_model
    from amnesiac.report.audit_report import write_audit_report

    u = tmp_path / "u"
    shutil.copytree(audit_models / "unlearned", u)
    cfg = AuditConfig(attacks=["fp", "rtn8"], n_boot=300, max_retain=20)
    out = tmp_path / "a"
    s1 = Audit(str(audit_models / "target"), str(u), qa_people["forget"], qa_people["retain"], out,
               retrained=str(audit_models / "retrained"), config=cfg).run()
    shutil.rmtree(u)
    save_model(trained_tiny, tok, u)  # "re-unlearned": now identical to the target
    s2 = Audit(str(audit_models / "target"), str(u), qa_people["forget"], qa_people["retain"], out,
               retrained=str(audit_models / "retrained"), config=cfg).run()
    assert s2["model_keys"]["unlearned"] == s2["model_keys"]["target"] != s1["model_keys"]["unlearned"]
    t_fp = s2["results"]["target"]["fp"]["forget_exact_match"]["mean"]
    assert s2["results"]["unlearned"]["fp"]["forget_exact_match"]["mean"] == t_fp
    assert s1["results"]["unlearned"]["fp"]["forget_exact_match"]["mean"] != t_fp
    paths = write_audit_report(s2, out)  # U = T: no drift, no crash
    assert s2["verdict"]["verdict"] in paths["md"].read_text()


def test_unknown_metric_and_bad_margin_fail_before_work():
    with pytest.raises(ValueError, match="available"):
        AuditConfig(metric="bleu")
    for bad in (2.0, float("nan"), -0.1):
        with pytest.raises(ValueError, match="margin"):
            AuditConfig(margin=bad)


@pytest.fixture(scope="module")
def tofu_models(tmp_path_factory, tok):
    """A tiny target that memorised 6 long TOFU answers (forget) + 6 others (retain), and a 'retrained' one that
    saw only the retain 6: the TOFU-format case where exact match of a 16-token first line was vacuous."""
    from amnesiac.core.logprobs import encode_pairs
    from amnesiac.data import load_dataset, qa_answer, qa_prompt
    from amnesiac.models import save_model
    from amnesiac.models.train import train_lm

    from conftest import make_tiny

    items = [it for it in load_dataset("tofu:forget10") if 20 <= len(it.answer.split()) <= 28]
    forget, retain = items[:6], items[6:12]
    d = tmp_path_factory.mktemp("tofu_models")

    def train(its, seed):
        m = make_tiny(tok, seed=seed, hidden=64, layers=2, heads=4, inter=128)
        ex = encode_pairs(tok, [qa_prompt(it.question) for it in its], [qa_answer(it.answer) + tok.eos_token for it in its])
        train_lm(m, ex, tok.pad_token_id, epochs=150, lr=5e-3, batch_size=12, warmup=10, seed=seed, schedule="constant")
        return m.eval()

    save_model(train(forget + retain, 1), tok, d / "target")
    save_model(train(retain, 2), tok, d / "retrained")
    return d, forget, retain


def test_tofu_format_verdict_measures_instead_of_passing(tofu_models, tmp_path):
    d, forget, retain = tofu_models
    cfg = AuditConfig(attacks=["fp", "rtn8"], n_boot=2000)
    # "unlearned" = the target itself: it still knows every forget answer
    s = Audit(str(d / "target"), str(d / "target"), forget, retain, tmp_path / "a", retrained=str(d / "retrained"),
              config=cfg).run()
    assert s["scoring"]["metric"] == "rougeL_recall" and "long answers" in s["scoring"]["reason"]
    t = s["results"]["target"]["fp"]
    assert t["forget_rougeL_recall"]["mean"] > 0.8  # memorised, and measured as such
    # what the old verdict looked at: exact match of at most 16 generated tokens, ≈ 0 on long answers
    from amnesiac.core import generate_greedy
    from amnesiac.data.schema import item_prompt
    from amnesiac.metrics.text import exact_match
    from amnesiac.models import load_model

    m, tk = load_model(d / "target")
    old = [exact_match(o, it.answer) for o, it in zip(
        generate_greedy(m, tk, [item_prompt(it) for it in forget], max_new_tokens=16, stop_strings=["\n"]), forget)]
    assert sum(old) == 0
    assert s["verdict"]["verdict"] == "FAIL" and "never removed" in s["verdict"]["reason"]
    # forcing exact match on long answers cannot PASS: it is INCONCLUSIVE (the target shows nothing under it)
    s2 = Audit(str(d / "target"), str(d / "target"), forget, retain, tmp_path / "b", retrained=str(d / "retrained"),
               config=AuditConfig(attacks=["fp", "rtn8"], n_boot=2000, metric="exact_match")).run()
    assert s2["verdict"]["verdict"] in ("INCONCLUSIVE", "FAIL") and s2["verdict"]["verdict"] != "PASS"


def test_audit_runs_the_papers_calibrated_quantizers(audit_models, qa_people, tmp_path):
    """GPTQ and AWQ are audit attacks like any other name, calibrated on the retain set."""
    cfg = AuditConfig(attacks=["fp", "gptq4_g128", "awq4_g128"], n_boot=300, max_retain=20)
    s = Audit(str(audit_models / "target"), str(audit_models / "unlearned"), qa_people["forget"], qa_people["retain"],
              tmp_path / "a", retrained=str(audit_models / "retrained"), config=cfg).run()
    rows = {r["attack"]: r for r in s["recovery"]}
    assert set(rows) == {"fp", "gptq4_g128", "awq4_g128"} and not s["skipped_attacks"]
    for a in ("gptq4_g128", "awq4_g128"):
        assert 0.0 <= rows[a]["value"] <= 1.0 and "excess" in rows[a]
    assert "gptq4_g128" in AuditConfig(suite="full").attack_list()


def test_audit_runs_llama_cpp_file_types(audit_models, qa_people, tmp_path):
    """`--attacks q4_k_m,q4_k_m_file`: llama.cpp's Q4_K_M mix (here every row falls back, as on any model whose
    width is not a multiple of 256) on the Linear layers, and as a whole file (embedding too): two deployments."""
    cfg = AuditConfig(attacks=["fp", "q4_k_m", "q4_k_m_file"], n_boot=100, max_retain=10)
    s = Audit(str(audit_models / "target"), str(audit_models / "unlearned"), qa_people["forget"], qa_people["retain"],
              tmp_path / "a", config=cfg).run()
    rows = {r["attack"]: r for r in s["recovery"]}
    assert set(rows) == {"fp", "q4_k_m", "q4_k_m_file"} and not s["skipped_attacks"]
    for a in ("q4_k_m", "q4_k_m_file"):
        assert 0.0 <= rows[a]["value"] <= 1.0


def test_experiments_never_write_into_inputs_or_foreign_folders(audit_models, qa_people, tmp_path):
    """audit / demo / sweep outputs follow the one ownership rule: --out inside a model, or a non-empty folder
    amnesiac did not write, is refused before any work, and nothing there changes."""
    from amnesiac.demo import DemoConfig, run_demo
    from amnesiac.errors import OutputError
    from amnesiac.sweep import SweepConfig, run_sweep

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    cfg = AuditConfig(attacks=["fp"], n_boot=100)
    for out in (audit_models / "unlearned" / "a", foreign):
        with pytest.raises(OutputError):
            Audit(str(audit_models / "target"), str(audit_models / "unlearned"), qa_people["forget"],
                  qa_people["retain"], out, config=cfg).run()
    with pytest.raises(OutputError):
        run_demo(DemoConfig(), foreign)
    with pytest.raises(OutputError):
        run_sweep(audit_models / "target", qa_people["forget"], qa_people["retain"], audit_models / "target",
                  SweepConfig(lrs=[1e-3], bits=[16], max_steps=1))
    assert (foreign / "notes.txt").read_text() == "keep me" and sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    assert not (audit_models / "unlearned" / "a").exists()


def test_a_quantization_aware_model_is_judged_in_its_shipped_format(audit_models, qa_people, tmp_path):
    """unlearn --robust-to rtn4_g64 ships the model at rtn4_g64: that deployment is U's reference level (not
    judged itself), and full precision becomes one more attack on it."""
    import shutil

    u = tmp_path / "u"
    shutil.copytree(audit_models / "unlearned", u)
    rec = json.loads((u / "unlearn.json").read_text())
    rec["robust"] = {"robust_to": ["rtn4_g64"]}
    (u / "unlearn.json").write_text(json.dumps(rec))
    s = Audit(str(audit_models / "target"), str(u), qa_people["forget"], qa_people["retain"], tmp_path / "a",
              config=AuditConfig(attacks=["fp", "rtn8"], n_boot=200, max_retain=10)).run()
    rows = {r["attack"]: r for r in s["recovery"]}
    assert set(rows) == {"fp", "rtn8"} and "rtn4_g64" in s["attacks"]
    assert s["verdict"]["reference"]["format"] == "rtn4_g64"
    u4 = s["results"]["unlearned"]["rtn4_g64"]["forget_exact_match"]["mean"]
    assert rows["fp"]["unlearned_fp"] == pytest.approx(u4) and "gain_over_fp" in rows["fp"]


def test_a_prompt_attack_that_rewrites_nothing_is_skipped_with_the_reason(audit_models, qa_people, tmp_path):
    """Data without TOFU's paraphrased questions (tofu:world_facts, a user's JSONL): the paraphrase row would be
    the fp row again and look like evidence; it is skipped and says why."""
    import dataclasses

    from amnesiac.attacks.prompts import inapplicable

    bare = [dataclasses.replace(it, paraphrased_questions=[]) for it in qa_people["forget"]]
    assert inapplicable("paraphrase", qa_people["forget"]) is None
    assert "paraphrased_question" in inapplicable("paraphrase", bare)
    assert inapplicable("step_by_step", bare) is None and inapplicable("rtn4_g64", bare) is None
    s = Audit(str(audit_models / "target"), str(audit_models / "unlearned"), bare, qa_people["retain"][:8],
              tmp_path / "a", config=AuditConfig(attacks=["paraphrase", "step_by_step"], n_boot=200)).run()
    assert s["attacks"] == ["fp", "step_by_step"] and "rewrites none" in s["skipped_attacks"]["paraphrase"]
