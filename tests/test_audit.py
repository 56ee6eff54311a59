"""Audit: summary schema, resume and content-keyed cache, scoring that follows the data (tiny models).
The verdict rule itself is tested on hand-made numbers in test_verdict.py."""
import copy
import json

import numpy as np
import pytest

from amnesiac.audit import Audit, AuditConfig


def test_unknown_attack_lists_available():
    with pytest.raises(ValueError, match="available"):
        AuditConfig(attacks=["nope"]).attack_list()


@pytest.fixture(scope="module")
def audit_models(tmp_path_factory, trained_tiny, tok, qa_people):
    """target = trained tiny model; unlearned = its copy after a few GA steps; retrained = a copy whose
    forget answers were disturbed harder (stands in for a never-trained model)."""
    import torch

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

    cfg = AuditConfig(attacks=["fp", "rtn8", "rtn4_g64", "paraphrase"], n_boot=500, max_retain=40)
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
    drop = lambda s: json.dumps({k: v for k, v in s.items() if k not in ("wall_s", "costs", "mia")}, sort_keys=True)
    assert drop(s1) == drop(s2)
    paths = write_audit_report(s1, out)
    html = paths["html"].read_text()
    assert "data:image/png;base64," in html and s1["verdict"]["verdict"] in html


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
