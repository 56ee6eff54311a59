"""`amnesiac reproduce smollm2` protocol logic on a miniature "release": a tiny Llama taught 16 completion
facts, its Linear weights rounded onto Q4_1 (as SmolLM2's GGUF release is), unlearned and re-quantized
with a few steps and a couple of precisions. The real run is the slow test at the end."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from amnesiac.io import amnesiac_home

REAL_HOME = amnesiac_home()  # read at collection, before the autouse fixture isolates AMNESIAC_HOME

COLOURS = ["red", "blue", "green", "white", "black", "brown", "pink", "grey", "gold", "orange", "purple", "silver"]
ANIMALS = ["cat", "dog", "cow", "owl"]


def _facts(path):
    rows = [{"prompt": f"Item {i} of the list is coloured", "answer": c, "category": "colours"} for i, c in enumerate(COLOURS)]
    rows += [{"prompt": f"Animal {i} says it is a", "answer": a, "category": "animals"} for i, a in enumerate(ANIMALS)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def release(tmp_path_factory, tok):
    """A tiny model that knows the facts, with every Linear weight exactly on the Q4_1 grid."""
    from amnesiac.attacks.quant.apply import quantize_model, released_quantized
    from amnesiac.attacks.quant.gguf_backend import GGUFQuantizer
    from amnesiac.core.logprobs import encode_pairs
    from amnesiac.models.load import save_model
    from amnesiac.models.train import train_lm

    from conftest import make_tiny

    d = tmp_path_factory.mktemp("smol")
    facts = _facts(d / "facts.jsonl")
    rows = [json.loads(x) for x in facts.read_text().splitlines()]
    model = make_tiny(tok, seed=3, hidden=64, layers=2, heads=4, inter=128)
    ex = encode_pairs(tok, [r["prompt"] for r in rows], [" " + r["answer"] + tok.eos_token for r in rows])
    train_lm(model, ex, tok.pad_token_id, epochs=100, lr=5e-3, batch_size=16, warmup=5, seed=0, schedule="constant")
    model = released_quantized(model.eval(), GGUFQuantizer("q4_1"))
    quantize_model(model, GGUFQuantizer("q8_0"), inplace=True, linear=False, embeddings=True)  # as SmolLM2's file
    save_model(model, tok, d / "release")
    return d / "release", facts


def _cfg(release, **kw):
    from amnesiac.reproduce.smollm2 import SmolConfig

    model, facts = release
    base = dict(model=str(model), facts=str(facts), forget="random:4", utility="animals", methods=("ga_gdr",),
                sure=True, lr=3e-3, steps=2, sure_lr=3e-2, sure_steps=2, batch_size=4,
                precisions=("fp", "q4_1", "q4_1_file", "q8_0", "rtn8", "gptq4_g128", "awq4_g128"), sweep=True, sweep_method="ga_gdr",
                sweep_lrs=(1e-3, 1e-1), sweep_steps=(1, 3), n_boot=200, eval_batch=16)
    return SmolConfig(**{**base, **kw})


def test_protocol_schema_precisions_identity_and_resume(release, tmp_path, monkeypatch):
    from amnesiac.reproduce import smollm2 as S

    cfg = _cfg(release)
    s = S.run_smollm2(cfg, tmp_path / "out", log=lambda *a: None, cache=tmp_path / "cache")
    assert s["data"]["known"] >= 10, s["data"]  # the miniature release knows (most of) its facts
    for k in ("schema", "rows", "verdict", "sweep", "diagnostics", "unlearn", "config", "seed", "versions", "wall_s"):
        assert k in s
    models = ["target", "GA_GDR", "GA_GDR_SURE"]
    assert {(r["method"], r["precision"]) for r in s["rows"]} == {(m, p) for m in models for p in cfg.precisions}
    by = {(r["method"], r["precision"]): r for r in s["rows"]}
    for r in s["rows"]:
        assert r["scenario"] == "smollm2-q4_1-release"
        lo, hi = r["forget_recall_ci"]
        assert lo <= r["forget_recall"] <= hi
    # Q4_1 of an exact Q4_1 model is the identity: same answers, grid offset 0, every code its own
    t_fp = by[("target", "fp")]
    for p in ("q4_1", "q4_1_file"):  # the whole file format too: its embedding is on the Q8_0 grid
        for k in ("forget_recall", "retain_recall", "utility_recall", "forget_prob"):
            assert t_fp[k] == by[("target", p)][k], (p, k)
    assert s["diagnostics"]["target"]["grid_offset_mean"] < 1e-6  # float rounding of w/d + zero only
    assert s["diagnostics"]["target"]["collapse_rate"] == 1.0
    t_q = by[("target", "q4_1")]
    assert t_q["excess_over_fp"] == 0.0 and list(t_q["excess_over_fp_ci"]) == [0.0, 0.0]
    # recipes recorded as run; SURE moved only its salient rows
    assert s["unlearn"]["GA_GDR"]["lr"] == 3e-3 and s["unlearn"]["GA_GDR"]["steps"] == 2
    assert s["unlearn"]["GA_GDR_SURE"]["sure_percentile"] == 90.0
    assert by[("GA_GDR", "q4_1")]["collapse_rate"] is not None and by[("GA_GDR", "fp")]["collapse_rate"] is None
    # sweep: the target row plus one row per (lr, checkpoint, precision); lr 0.1 moves codes, so a
    # first survivor exists and is the smallest update that changed codes
    sw = s["sweep"]
    assert len(sw["rows"]) == 2 + 2 * 2 * 2
    assert sw["first"]["codes_change"] is not None and sw["first"]["codes_change"]["collapse_rate"] < 1
    assert (tmp_path / "out" / "report.md").exists() and (tmp_path / "out" / "smollm2_sweep.png").exists()
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["rows"] == json.loads(json.dumps(s["rows"]))

    # second run: everything comes from the cache (no training, no measuring), same rows
    def boom(*a, **k):
        raise AssertionError("recomputed a cached piece")

    monkeypatch.setattr("amnesiac.reproduce.smollm2_measure.measure", boom)
    monkeypatch.setattr("amnesiac.reproduce.smollm2_measure.collapse_vs", boom)
    monkeypatch.setattr("amnesiac.unlearn.unlearn", boom)
    monkeypatch.setattr(S, "collapse_vs", boom)
    s2 = S.run_smollm2(cfg, tmp_path / "out2", log=lambda *a: None, cache=tmp_path / "cache")
    assert s2["rows"] == s["rows"] and s2["sweep"]["rows"] == s["sweep"]["rows"]


def test_verdict_rule_hand_checked():
    """The one verdict on per-item fact answers: the target is never judged, a gain below the margin passes,
    a clear gain at q4_1 fails, and the robust model is judged against its release format."""
    from amnesiac.reproduce.smollm2 import SmolConfig, verdict

    def k(ones, n=40):
        return {"forget_correct": [1.0] * ones + [0.0] * (n - ones)}

    cfg = SmolConfig(precisions=("fp", "q4_1", "q8_0"))
    evals = {"target": {p: k(40) for p in cfg.precisions},
             "GA": {"fp": k(4), "q8_0": k(5), "q4_1": k(5)}}
    assert verdict(evals, cfg)["verdict"] == "PASS"  # +1/40 = 0.025 < margin 0.05
    evals["GA"]["q4_1"] = k(30)
    v = verdict(evals, cfg)
    assert v["verdict"] == "FAIL" and v["precision"] == "q4_1" and v["method"] == "GA" and v["failing"] == ["GA@q4_1"]
    # a quantization-aware model ships at q4_1: its latent fp weights knowing more is not a recovery of q4_1 ...
    evals = {"target": evals["target"], "GA_ROBUST": {"fp": k(30), "q4_1": k(2), "q8_0": k(3)}}
    v = verdict(evals, cfg)
    assert {r["precision"] for r in v["rows"]} == {"fp", "q8_0"} and all(r["reference"] == "q4_1" for r in v["rows"])
    assert v["verdict"] == "FAIL" and v["precision"] == "fp"  # ... but serving the latent weights brings it back


def test_first_survivors_orders_by_update_size():
    from amnesiac.reproduce.smollm2_sweep import first_survivors

    def r(lr, st, f, c):
        return {"lr": lr, "steps": st, "precision": "q4_1", "forget": f, "retain": 1, "utility": 1, "collapse_rate": c}

    rows = [r(0, 0, 1.0, 1.0), r(1e-4, 16, 0.9, 0.99), r(3e-4, 4, 0.98, 0.999), r(1e-5, 4, 1.0, 1.0)]
    f = first_survivors(rows)
    # update sizes lr×steps: 4e-5 (no change), 1.2e-3 (codes change, forget −0.02 only), 1.6e-3 (forget −0.10)
    assert (f["codes_change"]["lr"], f["codes_change"]["steps"]) == (3e-4, 4)
    assert (f["forget_drops_at_release"]["lr"], f["forget_drops_at_release"]["steps"]) == (1e-4, 16)


def test_missing_model_error_names_the_fetch_command(monkeypatch):
    from amnesiac.reproduce.smollm2 import ReproduceError, resolve_model

    with pytest.raises(ReproduceError, match="amnesiac models fetch smollm2"):
        resolve_model(None)  # the isolated test home has no cached SmolLM2
    with pytest.raises(ReproduceError, match="no such file"):
        resolve_model("/nonexistent/smollm2")


def _hand_summary():
    """Two models × (fp, q4_1, rtn8) with hand-set per-item answers."""
    from amnesiac.reproduce.smollm2 import SmolConfig, build_rows, verdict

    def k(f, r=(1, 1), u=(1, 0)):
        return {"forget_correct": list(f), "retain_correct": list(r), "utility_correct": list(u), "forget_prob": [0.5] * len(f)}

    evals = {"target": {"fp": k([1, 1, 1, 1]), "q4_1": k([1, 1, 1, 1]), "rtn8": k([1, 1, 1, 1])},
             "GA_GDR": {"fp": k([1, 0, 0, 0]), "q4_1": k([1, 1, 1, 0]), "rtn8": k([1, 0, 0, 0], r=(1, 0))}}
    diag = {"target": {"grid_offset_mean": 0.0, "collapse_rate": 1.0, "drift_kept": None, "mean_abs_dw_over_step": 0.0,
                       "value_identical": 1.0},
            "GA_GDR": {"grid_offset_mean": 0.0, "collapse_rate": 1.0, "drift_kept": 0.0, "mean_abs_dw_over_step": 0.01,
                       "value_identical": 1.0}}
    info = {"target": {"model": "t"}, "GA_GDR": {"model": "u", "lr": 1e-5, "steps": 8, "sure_percentile": None, "wall_s": 1}}
    cfg = SmolConfig(precisions=("fp", "q4_1", "rtn8"), n_boot=200)
    rows = build_rows(evals, diag, info, cfg)
    return {"rows": rows, "verdict": verdict(evals, cfg)}


def test_rows_hand_checked_and_demo_hook(monkeypatch):
    """Row numbers by hand; `demo --smollm2` maps them onto the demo's columns and prints the scenario."""
    import io

    from rich.console import Console

    from amnesiac.report.demo_report import print_table
    from amnesiac.reproduce import smollm2 as S
    from amnesiac.reproduce.smollm2_demo import add_to_demo

    s = _hand_summary()
    by = {(r["method"], r["precision"]): r for r in s["rows"]}
    u = by[("GA_GDR", "q4_1")]
    assert (u["forget_recall"], u["excess_over_fp"], u["utility_recall"]) == (0.75, 0.5, 0.5)
    assert u["collapse_rate"] == 1.0 and by[("GA_GDR", "rtn8")]["collapse_rate"] is None
    assert by[("GA_GDR", "rtn8")]["retain_recall"] == 0.5 and by[("GA_GDR", "rtn8")]["excess_over_fp"] == 0.0
    # 4 paired items, per-item gain (0, 1, 1, 0): a resample drawing only items 0 and 3 has gain 0, with
    # probability (2/4)^4 = 6.25 % > 2.5 %, so the one-sided p is ≈ 0.0625 (×2 attacks, Holm) and the verdict
    # is PASS although the gain (0.5) is far above the margin: 4 facts are too few to conclude
    row = next(r for r in s["verdict"]["rows"] if r["attack"] == "GA_GDR@q4_1")
    assert row["p"] == pytest.approx(0.0625, abs=0.03) and row["p_holm"] == pytest.approx(min(1, 2 * row["p"]))
    assert u["excess_over_fp_ci"][0] <= 0.0 and s["verdict"]["verdict"] == "PASS"

    monkeypatch.setattr(S, "run_smollm2", lambda cfg, out, log=print: {**s, "wall_s": 1.0, "model": "m"})
    demo = {"rows": [], "verdicts": {}, "config": {"scenarios": ("trained",)}}
    add_to_demo(demo, "unused", log=lambda *a: None)
    assert demo["config"]["scenarios"] == ["trained", S.SCENARIO]
    assert {r["precision"] for r in demo["rows"]} == {"fp", "4bit", "8bit"}
    assert next(r for r in demo["rows"] if r["precision"] == "4bit")["quantizer"] == "q4_1"
    demo["config"]["scenarios"] = [S.SCENARIO]
    buf = io.StringIO()
    print_table(demo, Console(file=buf, width=250))
    text = buf.getvalue()
    assert S.SCENARIO in text and "0.75 / 1.00" in text and s["verdict"]["verdict"] in text


@pytest.mark.slow
def test_real_cli_on_cached_smollm2(tmp_path):
    """`amnesiac reproduce smollm2` on the fetched model with a tiny config (a few facts, 1 step)."""
    from typer.testing import CliRunner

    from amnesiac.cli import app
    from amnesiac.models.fetch import SOURCES

    d = REAL_HOME / "models" / SOURCES["smollm2"]["dir"]
    if not (d / "provenance.json").exists():
        pytest.skip(f"SmolLM2 is not cached at {d}: run `amnesiac models fetch smollm2` first")
    from amnesiac.data.facts import FACTS_FILE

    torch.set_num_threads(1)
    rows = [json.loads(x) for x in FACTS_FILE.read_text().splitlines() if x.strip()]
    few = [r for r in rows if r["category"] == "capitals"][:10] + [r for r in rows if r["category"] == "elements"][:4]
    facts = tmp_path / "facts.jsonl"  # 14 facts keep the known-facts probe short (the full set takes ~1 min)
    facts.write_text("".join(json.dumps(r) + "\n" for r in few))
    res = CliRunner().invoke(app, ["reproduce", "smollm2", "--model", str(d), "--out", str(tmp_path / "o"),
                                   "--facts", str(facts), "--forget", "random:3", "--methods", "ga_gdr", "--no-sure",
                                   "--steps", "1", "--precisions", "fp,q4_1,q4_1_file", "--no-sweep"])
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    by = {(r["method"], r["precision"]): r for r in s["rows"]}
    for p in ("q4_1", "q4_1_file"):  # the release re-quantized to its own format is the release
        for k in ("forget_recall", "retain_recall", "utility_recall", "forget_prob"):
            assert by[("target", p)][k] == by[("target", "fp")][k], (p, k)
    assert by[("target", "fp")]["forget_recall"] == 1.0  # forget facts are ones it knows
    assert s["diagnostics"]["target"]["grid_offset_mean"] < 1e-6  # on the Q4_1 grid up to float rounding
    assert np.isfinite(by[("GA_GDR", "q4_1")]["collapse_rate"])
