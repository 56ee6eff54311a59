"""Audit: verdict rule on constructed numbers, summary schema, resume from cache (tiny models)."""
import copy
import json

import numpy as np
import pytest

from amnesiac.audit import Audit, AuditConfig, recovery_rows, verdict


def _res(t, u, r=None, attacks=("fp", "rtn4_g64")):
    def k(v):
        return {"forget_em": list(map(float, v)), "retain_em": [1.0, 1.0], "forget_prob": [0.5] * len(v),
                "forget_outputs": [""] * len(v)}

    out = {"target": {a: k(t) for a in attacks}, "unlearned": {a: k(u[a]) for a in attacks}}
    if r is not None:
        out["retrained"] = {a: k(r) for a in attacks}
    return out


def test_verdict_fails_when_attack_recovers_above_retrained():
    n = 60
    t = np.ones(n)
    u = {"fp": np.r_[np.ones(6), np.zeros(n - 6)], "rtn4_g64": np.r_[np.ones(50), np.zeros(n - 50)]}
    r = np.r_[np.ones(3), np.zeros(n - 3)]
    cfg = AuditConfig(n_boot=500)
    rows = recovery_rows(_res(t, u, r), ["fp", "rtn4_g64"], cfg)
    by = {x["attack"]: x for x in rows}
    assert by["rtn4_g64"]["excess"] == pytest.approx(50 / 60 - 3 / 60)
    assert by["rtn4_g64"]["recovery_ratio"] == pytest.approx(50 / 60)
    # recovered fraction = (0.833 - 0.1) / (1 - 0.1)
    assert by["rtn4_g64"]["recovered_fraction"] == pytest.approx((50 / 60 - 6 / 60) / (1 - 6 / 60))
    assert by["rtn4_g64"]["significant"] and not by["fp"]["significant"]  # fp excess 0.05 but CI crosses 0
    v = verdict(rows, cfg, True)
    assert v["verdict"] == "FAIL" and v["worst_attack"] == "rtn4_g64"
    lo, hi = by["rtn4_g64"]["excess_ci"]
    assert lo < by["rtn4_g64"]["excess"] < hi


def test_verdict_passes_when_within_margin():
    n = 40
    t = np.ones(n)
    u = {"fp": np.r_[np.ones(4), np.zeros(n - 4)], "rtn4_g64": np.r_[np.ones(5), np.zeros(n - 5)]}
    r = np.r_[np.ones(4), np.zeros(n - 4)]
    cfg = AuditConfig(n_boot=300)
    rows = recovery_rows(_res(t, u, r), ["fp", "rtn4_g64"], cfg)
    assert verdict(rows, cfg, True)["verdict"] == "PASS"
    # without a retrained model the floor is U at full precision
    rows2 = recovery_rows(_res(t, u), ["fp", "rtn4_g64"], cfg)
    assert rows2[1]["floor"] == "unlearned@fp" and rows2[1]["excess"] == pytest.approx(1 / 40)
    assert verdict(rows2, cfg, False)["verdict"] == "PASS"


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

    cfg = AuditConfig(attacks=["fp", "rtn8", "rtn4_g64", "paraphrase"], n_boot=200, max_retain=40)
    out = tmp_path / "a"
    a = Audit(str(audit_models / "target"), str(audit_models / "unlearned"), qa_people["forget"], qa_people["retain"],
              out, retrained=str(audit_models / "retrained"), holdout=qa_people["holdout"], config=cfg)
    s1 = a.run()
    assert s1["verdict"]["verdict"] in ("PASS", "FAIL") and s1["verdict"]["reason"]
    assert set(s1["results"]) == {"target", "unlearned", "retrained"}
    assert [r["attack"] for r in s1["recovery"]] == ["fp", "rtn8", "rtn4_g64", "paraphrase"]
    for r in s1["recovery"]:
        assert {"forget_recall", "forget_recall_ci", "recovery_ratio", "recovery_ratio_ci", "excess", "excess_ci",
                "significant", "floor_recall"} <= set(r)
    assert 0.0 <= s1["collapse"]["rtn4_g64"]["overall"]["collapse_rate"] <= 1.0
    assert (out / "per_example.jsonl").exists() and (out / "summary.json").exists()
    lines = (out / "per_example.jsonl").read_text().splitlines()
    assert len(lines) == 3 * 4 * len(qa_people["forget"])
    # resume: a second run reads every (model, attack) from the cache and gives the same numbers
    cached = sorted(p.name for p in (out / "cache").iterdir())
    assert len(cached) == 12
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
