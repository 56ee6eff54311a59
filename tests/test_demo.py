"""Demo verdict rule and table on constructed per-item results (the full demo is run by `make demo`)."""
import numpy as np

from amnesiac.demo import PRECISIONS, DemoConfig, demo_verdicts
from amnesiac.report.demo_report import table_rows


def _k(forget):
    return {"forget": {"exact_match": list(map(float, forget)), "prob": [0.5] * len(forget)},
            "retain": {"exact_match": [1.0] * 10}}


def _raw(u_by_precision, r=0.05, n=40):
    ref = np.r_[np.ones(int(r * n)), np.zeros(n - int(r * n))]
    raw = {}
    for sc in ("trained", "released-quantized"):
        raw[(sc, "retrained")] = {"precisions": {p: _k(ref) for p in PRECISIONS}}
        raw[(sc, "target")] = {"precisions": {p: _k(np.ones(n)) for p in PRECISIONS}}
        u = u_by_precision[sc]
        raw[(sc, "NPO_KLR")] = {"precisions": {p: _k(np.r_[np.ones(int(u[p] * n)), np.zeros(n - int(u[p] * n))])
                                              for p in PRECISIONS}}
    return raw


def test_demo_verdict_names_the_scenario_where_knowledge_returns():
    flat = {p: 0.2 for p in PRECISIONS}
    back = {**flat, "4bit": 0.95}
    v = demo_verdicts([], _raw({"trained": flat, "released-quantized": back}), DemoConfig())
    assert v["trained"]["verdict"] == "PASS"
    assert v["released-quantized"]["verdict"] == "FAIL"
    assert v["released-quantized"]["precision"] == "4bit" and v["released-quantized"]["method"] == "NPO_KLR"
    assert "released-quantized" in v["released-quantized"]["reason"]
    assert v["released-quantized"]["rule"]["correction"] == "Holm" and len(v["released-quantized"]["rows"]) == 4


def test_demo_judges_a_robust_model_in_the_format_it_was_trained_for():
    # latent fp weights know little, the shipped 4-bit model nothing: judged against its 4-bit level, 8-bit
    # (close to fp) is a deployment that brings knowledge back relative to what was shipped
    raw = _raw({"trained": {p: 0.2 for p in PRECISIONS}, "released-quantized": {p: 0.2 for p in PRECISIONS}})
    n = 40
    vals = {"fp": 0.9, "8bit": 0.9, "4bit": 0.05, "3bit": 0.05, "4bit_foreign": 0.1}
    raw[("trained", "NPO_KLR_ROBUST")] = {"precisions": {p: _k(np.r_[np.ones(int(vals[p] * n)), np.zeros(n - int(vals[p] * n))])
                                                         for p in PRECISIONS}}
    v = demo_verdicts([], raw, DemoConfig(scenarios=("trained",)))["trained"]
    robust_rows = [r for r in v["rows"] if r["method"] == "NPO_KLR_ROBUST"]
    assert {r["precision"] for r in robust_rows} == {"fp", "8bit", "3bit", "4bit_foreign"}
    assert all(r["reference"] == "4bit" for r in robust_rows)
    assert v["verdict"] == "FAIL" and v["method"] == "NPO_KLR_ROBUST"


def test_demo_verdict_ignores_a_model_that_never_unlearned():
    # forget recall high at every precision: not unlearned, but nothing *comes back* under quantization
    high = {p: 0.9 for p in PRECISIONS}
    v = demo_verdicts([], _raw({"trained": high, "released-quantized": high}), DemoConfig())
    assert v["trained"]["verdict"] == "PASS"


def test_table_rows_layout():
    rows = [{"scenario": "trained", "method": m, "precision": p, "forget_recall": 0.5, "retain_recall": 1.0,
             "collapse_rate": 0.97 if p == "4bit" else None, "drift_kept": 0.9 if p == "4bit" else None,
             "mean_abs_dw_over_4bit_step": 0.05 if p == "4bit" else None}
            for m in ("target", "GA_GDR") for p in PRECISIONS]
    t = table_rows({"rows": rows}, "trained")
    assert t[0][0] == "method" and [r[0] for r in t[1:]] == ["target", "GA_GDR"]
    assert t[0][1] == "fp F/R" and t[1][1] == "0.50 / 1.00" and t[1][-3] == "97.0%"


def test_sweep_runs_caches_and_plots(trained_tiny, tok, qa_people, tmp_path):
    import copy

    from amnesiac.models import save_model
    from amnesiac.sweep import SweepConfig, run_sweep

    t = save_model(copy.deepcopy(trained_tiny), tok, tmp_path / "target")
    cfg = SweepConfig(method="ga_gdr", lrs=[1e-5, 1e-2], bits=[16, 4], max_steps=4, batch_size=4)
    s = run_sweep(t, qa_people["forget"], qa_people["retain"][:30], tmp_path / "sw", cfg, log=lambda *_: None)
    by = {(r["lr"], r["bits"]): r for r in s["rows"]}
    assert set(by) == {(1e-5, 16), (1e-5, 4), (1e-2, 16), (1e-2, 4)}
    # a 1000x larger lr moves more weights across 4-bit rounding boundaries
    assert by[(1e-2, 4)]["collapse_rate_4bit"] < by[(1e-5, 4)]["collapse_rate_4bit"] <= 1.0
    assert (tmp_path / "sw" / "sweep.html").exists()
    s2 = run_sweep(t, qa_people["forget"], qa_people["retain"][:30], tmp_path / "sw", cfg, log=lambda *_: None)
    assert [r["forget_recall"] for r in s2["rows"]] == [r["forget_recall"] for r in s["rows"]]


def test_sweep_cache_tells_forget_sets_apart(trained_tiny, tok, qa_people, tmp_path):
    """Two sweeps into one --out with different forget sets: the second unlearns anew (content keys include the
    data), and a rerun of the first reuses its own models."""
    import copy

    from amnesiac.models import save_model
    from amnesiac.sweep import SweepConfig, run_sweep

    t = save_model(copy.deepcopy(trained_tiny), tok, tmp_path / "target")
    cfg = SweepConfig(method="ga_gdr", lrs=[1e-2], bits=[16], max_steps=3, batch_size=4)
    f1, f2 = qa_people["forget"], qa_people["retain"][:10]
    r = qa_people["retain"][10:30]
    def q(*_):
        return None

    a = run_sweep(t, f1, r, tmp_path / "sw", cfg, log=q)
    b = run_sweep(t, f2, r, tmp_path / "sw", cfg, log=q)
    assert a["rows"][0]["model"] != b["rows"][0]["model"]
    assert a["data"]["forget"] != b["data"]["forget"]
    models = sorted(p.name for p in (tmp_path / "sw" / "models").iterdir())
    assert len(models) == 2
    a2 = run_sweep(t, f1, r, tmp_path / "sw", cfg, log=q)
    assert a2["rows"] == a["rows"] and len(list((tmp_path / "sw" / "models").iterdir())) == 2


def test_eval_row_measures_gptq_and_awq_calibrated_on_the_texts_given(trained_tiny, tok, qa_people, tmp_path):
    """The calibrated columns (GPTQ / AWQ, 4 and 8 bit) are measured next to the per-weight ones, cached by
    content and by the calibration texts; without `calibrated` they are left out."""
    import copy
    import json

    from amnesiac.attacks.quant.calib import calib_texts_from_items
    from amnesiac.demo import CALIBRATED, eval_row
    from amnesiac.models import save_model

    t = save_model(copy.deepcopy(trained_tiny), tok, tmp_path / "target")
    forget, retain = qa_people["forget"][:6], qa_people["retain"][:6]
    calib = calib_texts_from_items(qa_people["retain"][:16])
    r = eval_row(t, forget, retain, DemoConfig(calibrated=True), tmp_path / "cache", calib_texts=calib)
    assert set(r["precisions"]) == set(PRECISIONS) | set(CALIBRATED)
    files = sorted((tmp_path / "cache").glob("*.json"))
    assert {json.loads(f.read_text())["deployment"] for f in files} == set(PRECISIONS.values()) | set(CALIBRATED.values())
    # 8-bit GPTQ on a tiny model changes no greedy answer that full precision gets right or wrong by a wide margin
    assert r["precisions"]["gptq8"]["forget"]["exact_match"] == r["precisions"]["fp"]["forget"]["exact_match"]
    again = eval_row(t, forget, retain, DemoConfig(calibrated=True), tmp_path / "cache", calib_texts=calib)
    assert again["precisions"] == r["precisions"] and len(list((tmp_path / "cache").glob("*.json"))) == len(files)
    # other calibration texts are another measurement (the key includes them)
    eval_row(t, forget, retain, DemoConfig(calibrated=True), tmp_path / "cache", calib_texts=calib[:8])
    assert len(list((tmp_path / "cache").glob("*.json"))) == len(files) + len(CALIBRATED)
    plain = eval_row(t, forget, retain, DemoConfig(calibrated=False), tmp_path / "cache2")
    assert set(plain["precisions"]) == set(PRECISIONS)


def test_paper_layout_needs_the_calibrated_columns():
    from amnesiac.report.demo_report import columns, paper_rows

    labels = list(PRECISIONS) + ["gptq4", "awq4", "gptq8", "awq8"]
    rows = [{"scenario": "trained", "method": "NPO_KLR", "precision": p, "forget_recall": i / 10, "retain_recall": 1.0}
            for i, p in enumerate(labels)]
    s = {"rows": rows, "precisions": dict.fromkeys(labels)}
    assert columns(s) == labels
    t = paper_rows(s, "trained")
    assert t[0] == ["method", "fp", "RTN 8", "RTN 4", "GPTQ 8", "GPTQ 4", "AWQ 8", "AWQ 4"]
    # fp 0.0, 8bit 0.1, 4bit 0.2, gptq4 0.5, awq4 0.6, gptq8 0.7, awq8 0.8
    assert t[1] == ["NPO_KLR", "0.00", "0.10", "0.20", "0.70", "0.50", "0.80", "0.60"]
    assert paper_rows({"rows": [r for r in rows if r["precision"] in PRECISIONS]}, "trained") is None
    assert columns({"rows": [], "precisions": dict.fromkeys(PRECISIONS)}) == list(PRECISIONS)


def test_demo_smollm2_composes_through_the_extend_hook(monkeypatch, tmp_path):
    """`demo --smollm2` hands the SmolLM2 rows to run_demo(extend=...) (the demo imports no other experiment)."""
    from typer.testing import CliRunner

    import amnesiac.demo
    import amnesiac.report.demo_report
    import amnesiac.reproduce.smollm2
    from amnesiac.cli import app
    from amnesiac.reproduce.smollm2_demo import add_to_demo

    seen = {}

    def fake_run_demo(cfg, out, log=print, extend=None):
        seen.update(cfg=cfg, extend=extend)
        return {"wall_s": 0.0, "prepare_s": 0.0}

    monkeypatch.setattr(amnesiac.reproduce.smollm2, "resolve_model", lambda m: "m")
    monkeypatch.setattr(amnesiac.demo, "run_demo", fake_run_demo)
    monkeypatch.setattr(amnesiac.report.demo_report, "print_table", lambda s, c: None)
    for flag, want in (("--smollm2", add_to_demo), ("--no-smollm2", None)):
        r = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d"), flag])
        assert r.exit_code == 0, r.output
        assert seen["extend"] is want and seen["cfg"].smollm2 == (want is not None)


def test_demo_unlearns_in_bf16_next_to_float32(trained_tiny, tok, qa_people, tmp_path):
    """--unlearn-precisions float32,bfloat16: a bf16 row per plain method (the seed paper's recipe), its own cached
    run with precision=bfloat16 in unlearn.json, its collapse diagnostics against the bf16 cast of the target
    (where the run started), and the float32 run's recipe — hence its cache key — unchanged."""
    import copy

    from amnesiac.demo import eval_row, run_unlearning
    from amnesiac.io import read_json
    from amnesiac.models import save_model

    t = save_model(copy.deepcopy(trained_tiny), tok, tmp_path / "target")
    forget, retain = qa_people["forget"][:6], qa_people["retain"][:12]
    cfg = DemoConfig(lrs=(1e-2,), max_steps=2, batch_size=4, unlearn_precisions=("float32", "bfloat16"))

    def q(*_):
        return None

    u32 = run_unlearning(t, "ga_gdr", False, cfg, forget, retain, q)
    u16 = run_unlearning(t, "ga_gdr", False, cfg, forget, retain, q, precision="bfloat16")
    assert "_bf16-" in u16.name and "_bf16" not in u32.name
    info16, info32 = read_json(u16 / "unlearn.json"), read_json(u32 / "unlearn.json")
    assert info16["config"]["precision"] == "bfloat16" and info32["config"]["precision"] == "float32"
    assert info16["rounded_away"]["steps"] == 2 and 0 < info16["rounded_away"]["mean"] <= 1
    # same recipe as a DemoConfig without the precision axis: the float32 run is the cached one
    assert run_unlearning(t, "ga_gdr", False, DemoConfig(lrs=(1e-2,), max_steps=2, batch_size=4), forget, retain, q) == u32
    r16 = eval_row(u16, forget, retain, cfg, tmp_path / "cache", t, precision="bfloat16")
    r16_vs_fp32_target = eval_row(u16, forget, retain, cfg, tmp_path / "cache", t)
    # against the float32 target the cast itself counts as an update: far less of it is rounded back
    assert r16["collapse"]["collapse_rate"] > r16_vs_fp32_target["collapse"]["collapse_rate"]
    assert len(list((tmp_path / "cache").glob("collapse-*.json"))) == 2


def test_demo_refuses_bad_unlearn_precisions():
    import pytest

    from amnesiac.errors import UserError

    with pytest.raises(UserError, match="fp8"):
        DemoConfig(unlearn_precisions=("float32", "fp8"))
    with pytest.raises(UserError, match="float32"):
        DemoConfig(unlearn_precisions=("bfloat16",))


def test_sweep_metric_override(trained_tiny, tok, qa_people, tmp_path):
    """--metric picks the recall metric of both sweeps (chat answers need ROUGE-L, not exact match); the unlearned
    models are the same runs (the recipe does not depend on the metric); an unknown metric fails before any work."""
    import copy

    import pytest

    from amnesiac.errors import UserError
    from amnesiac.models import save_model
    from amnesiac.sweep import SweepConfig, run_sweep
    from amnesiac.sweep_offset import OffsetSweepConfig

    t = save_model(copy.deepcopy(trained_tiny), tok, tmp_path / "target")
    f, r = qa_people["forget"][:6], qa_people["retain"][:10]

    def q(*_):
        return None

    em = run_sweep(t, f, r, tmp_path / "sw", SweepConfig(method="ga_gdr", lrs=[1e-3], bits=[16], max_steps=1, batch_size=4), log=q)
    rl = run_sweep(t, f, r, tmp_path / "sw", SweepConfig(method="ga_gdr", lrs=[1e-3], bits=[16], max_steps=1, batch_size=4,
                                                        metric="rougeL_recall"), log=q)
    assert em["rows"][0]["metric"] == "exact_match" and rl["rows"][0]["metric"] == "rougeL_recall"
    assert em["rows"][0]["model"] == rl["rows"][0]["model"]
    for cls in (SweepConfig, OffsetSweepConfig):
        with pytest.raises(UserError, match="nosuch"):
            cls(metric="nosuch").check()
