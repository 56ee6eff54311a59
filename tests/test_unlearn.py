"""Unlearning methods, regularisers, reference handling, SURE, trainer (resume, NaN), LoRA, CLI (docs/science.md §1–2)."""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from amnesiac.core import score_pairs
from amnesiac.data import qa_answer, qa_prompt
from amnesiac.unlearn import UnlearnDiverged, UnlearnError, parse_method, unlearn

METHODS = ["ga", "npo", "simnpo", "idkdpo", "rmu"]
REGS = ["none", "gdr", "klr"]
FAST = dict(progress=False, batch_size=4)


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny matmuls on a shared 2-core box: one intra-op thread is ~50× faster than two fighting threads
    (measured: 0.3 s vs 21 s for one 4-step NPO_KLR run under load). Restored at session end."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def nll(model, tok, items) -> float:
    """Mean token NLL of the answers (scored through core, like every metric)."""
    sc = score_pairs(model, tok, [qa_prompt(i.question) for i in items], [qa_answer(i.answer) for i in items])
    return float(-sc.sum.sum() / sc.lengths.sum())


@pytest.fixture(scope="module")
def people(qa_people):
    return {"forget": qa_people["forget"], "retain": qa_people["retain"][:24]}


def _fresh(trained_tiny):
    return copy.deepcopy(trained_tiny)


# ----- hand-computed loss values (expected numbers from math, not from the implementation) -----

def test_npo_simnpo_dpo_kl_values():
    from amnesiac.unlearn.idkdpo import dpo_loss
    from amnesiac.unlearn.npo import npo_loss
    from amnesiac.unlearn.regularizers import gdr_loss, kl_loss
    from amnesiac.unlearn.simnpo import simnpo_loss
    from amnesiac.unlearn.ga import ga_loss

    lp, ref = torch.tensor([-2.0, -5.0]), torch.tensor([-3.0, -1.0])
    b = 0.1
    # NPO: (2/β) mean log(1 + (π/π_ref)^β), ratios e^{1} and e^{-4}
    exp = (2 / b) * np.mean([math.log(1 + math.exp(1.0) ** b), math.log(1 + math.exp(-4.0) ** b)])
    assert npo_loss(lp, ref, b).item() == pytest.approx(exp, rel=1e-6)
    # SimNPO: −(2/β) mean log σ(−(β/|y|) log π − γ)
    b2, g, L = 2.5, 0.5, torch.tensor([4.0, 2.0])
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    exp = -(2 / b2) * np.mean([math.log(sig(-(b2 / 4) * -2.0 - g)), math.log(sig(-(b2 / 2) * -5.0 - g))])
    assert simnpo_loss(lp, L, b2, g).item() == pytest.approx(exp, rel=1e-6)
    # DPO: −(2/β) mean log σ(β[(lw − rw) − (ll − rl)])
    lw, rw, ll, rl = torch.tensor([-4.0, -6.0]), torch.tensor([-5.0, -5.0]), torch.tensor([-2.0, -3.0]), torch.tensor([-1.0, -3.0])
    m = [(-4 + 5) - (-2 + 1), (-6 + 5) - (-3 + 3)]  # = [2, -1]
    exp = -(2 / b) * np.mean([math.log(sig(b * x)) for x in m])
    assert dpo_loss(lw, ll, rw, rl, b).item() == pytest.approx(exp, rel=1e-6)
    # KL(p_ref ‖ p_θ) per token, averaged over 2 positions
    p_ref = [[0.5, 0.25, 0.25], [0.9, 0.05, 0.05]]
    p_th = [[0.25, 0.5, 0.25], [1 / 3, 1 / 3, 1 / 3]]
    exp = np.mean([sum(a * math.log(a / c) for a, c in zip(r, t)) for r, t in zip(p_ref, p_th)])
    got = kl_loss(torch.tensor(p_ref).log(), torch.tensor(p_th).log()).item()
    assert got == pytest.approx(exp, rel=1e-5) and got > 0
    # GA / GDR: token means of log p over the mask
    tl, mk = torch.tensor([[-1.0, -3.0, 0.0]]), torch.tensor([[1.0, 1.0, 0.0]])
    assert ga_loss(tl, mk).item() == pytest.approx(-2.0) and gdr_loss(tl, mk).item() == pytest.approx(2.0)


def test_names_parse_and_errors():
    assert parse_method("NPO_KLR") == ("npo", "klr", False)
    assert parse_method("ga_gdr_sure") == ("ga", "gdr", True)
    assert parse_method("simnpo") == ("simnpo", "none", False)
    assert parse_method("npo", "gdr") == ("npo", "gdr", False)
    with pytest.raises(UnlearnError, match="available: ga, idkdpo, npo, rmu, simnpo"):
        parse_method("gradascent")
    with pytest.raises(UnlearnError, match="unknown regularizer 'xyz'; available: gdr, klr, none"):
        parse_method("npo_xyz")
    with pytest.raises(UnlearnError, match="names regulariser"):
        parse_method("npo_klr", "gdr")


def test_bad_inputs(trained_tiny, tok, people, tmp_path):
    with pytest.raises(UnlearnError, match="forget set is empty"):
        unlearn(_fresh(trained_tiny), [], people["retain"], tokenizer=tok, **FAST)
    with pytest.raises(UnlearnError, match="unknown unlearning method"):
        unlearn(_fresh(trained_tiny), people["forget"], people["retain"], tokenizer=tok, method="foo", **FAST)
    from amnesiac.models import ModelLoadError

    with pytest.raises(ModelLoadError, match="no such model"):
        unlearn(tmp_path / "missing", people["forget"], people["retain"], out=tmp_path / "o", **FAST)
    assert not (tmp_path / "o").exists()
    with pytest.raises(UnlearnError, match="needs a retain set"):
        unlearn(_fresh(trained_tiny), people["forget"], None, tokenizer=tok, method="ga_gdr", **FAST)
    with pytest.raises(UnlearnError, match="unknown unlearn option"):
        unlearn(_fresh(trained_tiny), people["forget"], tokenizer=tok, lrate=1.0)


# ----- every method × regulariser -----

@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("reg", REGS)
def test_every_method_and_regularizer(method, reg, trained_tiny, tok, people):
    model = _fresh(trained_tiny)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    f0 = nll(model, tok, people["forget"])
    lr = {"rmu": 2e-2, "idkdpo": 3e-3}.get(method, 2e-3)
    res = unlearn(model, people["forget"], people["retain"], tokenizer=tok, method=f"{method}_{reg}", lr=lr,
                  max_steps=4, rmu_c=20.0, rmu_alpha=1.0, **FAST)
    losses = [r["loss"] for r in res.info["losses"]]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    changed = [n for n, p in res.model.named_parameters() if not torch.equal(p, before[n])]
    assert changed
    if method == "rmu":  # only the MLPs of layers ℓ−2..ℓ move
        assert all(".mlp." in n for n in changed)
    assert nll(res.model, tok, people["forget"]) > f0 + 0.05
    assert res.info["method"] == method and res.info["regularizer"] == reg


def test_regularizers_limit_retain_drift(trained_tiny, tok, people):
    drift = {}
    r0 = nll(trained_tiny, tok, people["retain"])
    for reg in REGS:
        res = unlearn(_fresh(trained_tiny), people["forget"], people["retain"], tokenizer=tok, method=f"ga_{reg}",
                      lr=3e-3, max_steps=8, seed=0, alpha=2.0, **FAST)
        drift[reg] = nll(res.model, tok, people["retain"]) - r0
    assert drift["gdr"] < drift["none"] and drift["klr"] < drift["none"], drift


def test_precomputed_reference_equals_frozen_copy(trained_tiny, tok, people):
    runs = {}
    for mode in ("precompute", "copy"):
        runs[mode] = unlearn(_fresh(trained_tiny), people["forget"], people["retain"], tokenizer=tok,
                             method="npo_klr", lr=2e-3, max_steps=3, reference=mode, **FAST)
        assert runs[mode].info["reference"]["mode"] == mode
    a, b = runs["precompute"], runs["copy"]
    assert [r["loss"] for r in a.info["losses"]] == [r["loss"] for r in b.info["losses"]]
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


# ----- SURE -----

@pytest.mark.parametrize("scope", ["matrix", "global"])
def test_sure_rows_outside_mask_bit_identical(scope, trained_tiny, tok, people):
    from amnesiac.unlearn import sure as sure_mod

    model = _fresh(trained_tiny)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    P = 80.0
    captured = {}
    orig = sure_mod.build_masks

    def spy(sal, pct, sc):
        m, st = orig(sal, pct, sc)
        captured.update(m)
        return m, st

    sure_mod.build_masks = spy
    try:
        res = unlearn(model, people["forget"], people["retain"], tokenizer=tok, method="ga_gdr", lr=1e-2,
                      weight_decay=0.1, max_steps=3, sure_percentile=P, sure_scope=scope, **FAST)
    finally:
        sure_mod.build_masks = orig
    st = res.info["sure_mask"]
    assert st["scope"] == scope and st["percentile"] == P
    total_sel = 0
    for n, p in res.model.named_parameters():
        m = captured[n]
        if scope == "matrix":  # each tensor keeps exactly ⌈20 %⌉ of its rows
            assert int(m.sum()) == math.ceil(0.2 * m.numel() - 1e-9), n
        total_sel += int(m.sum())
        assert torch.equal(p[~m], before[n][~m]), f"{n}: masked-out rows moved"
    assert not all(torch.equal(p, before[n]) for n, p in res.model.named_parameters())
    if scope == "global":
        assert total_sel == math.ceil(0.2 * st["rows_total"] - 1e-9)
    assert st["rows_selected"] == total_sel


# ----- trainer: resume, divergence, outputs, early stop -----

def test_kill_and_resume_is_bitwise_identical(trained_tiny, tok, people, tmp_path):
    kw = dict(method="npo_klr", lr=3e-3, max_steps=6, grad_accum=2, schedule="cosine", warmup_steps=2,
              checkpoint_every=2, **FAST)
    full = unlearn(_fresh(trained_tiny), people["forget"], people["retain"], tokenizer=tok, out=tmp_path / "a", **kw)

    class Kill(Exception):
        pass

    def killer(rec):
        if rec["step"] == 5:  # after the step-4 checkpoint, before finishing
            raise Kill

    with pytest.raises(Kill):
        unlearn(_fresh(trained_tiny), people["forget"], people["retain"], tokenizer=tok, out=tmp_path / "b",
                callbacks=[killer], **kw)
    assert (tmp_path / "b" / "checkpoint" / "optimizer.safetensors").exists()
    with pytest.raises(UnlearnError, match="pass resume"):
        unlearn(_fresh(trained_tiny), people["forget"], people["retain"], tokenizer=tok, out=tmp_path / "b", **kw)
    with pytest.raises(ValueError, match="different training config"):
        unlearn(_fresh(trained_tiny), people["forget"], people["retain"], tokenizer=tok, out=tmp_path / "b",
                resume=True, **{**kw, "lr": 1e-3})
    res = unlearn(_fresh(trained_tiny), people["forget"], people["retain"], tokenizer=tok, out=tmp_path / "b",
                  resume=True, **kw)
    assert res.info["resumed_from_step"] == 4
    sa, sb = full.model.state_dict(), res.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [r["loss"] for r in full.info["losses"]] == [r["loss"] for r in res.info["losses"]]
    rows = [json.loads(x) for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert not (tmp_path / "b" / "checkpoint").exists()
    # no pickle anywhere in the output
    assert not [p for p in (tmp_path / "b").rglob("*") if p.suffix in (".bin", ".pt", ".pkl")]


def test_nan_loss_stops_and_keeps_checkpoint(trained_tiny, tok, people, tmp_path):
    with pytest.raises(UnlearnDiverged, match="non-finite .* step .*checkpoint is kept"):
        unlearn(_fresh(trained_tiny), people["forget"], people["retain"], tokenizer=tok, out=tmp_path / "o",
                method="ga", lr=1e6, max_grad_norm=None, max_steps=40, checkpoint_every=1, **FAST)
    assert (tmp_path / "o" / "checkpoint" / "params.safetensors").exists()
    from safetensors.torch import load_file

    assert all(torch.isfinite(t).all() for t in load_file(tmp_path / "o" / "checkpoint" / "params.safetensors").values())


def test_output_dir_and_unlearn_json(trained_tiny, tok, people, tmp_path):
    from amnesiac.models import load_model, save_model

    src = save_model(trained_tiny, tok, tmp_path / "target")
    res = unlearn(src, people["forget"], people["retain"], out=tmp_path / "u", method="simnpo_gdr", lr=2e-3,
                  max_steps=3, device="cpu", **FAST)
    m, t = load_model(tmp_path / "u", device="cpu")
    info = json.loads((tmp_path / "u" / "unlearn.json").read_text())
    for k in ("config", "seed", "versions", "losses", "wall_s", "memory", "drift", "hparams"):
        assert k in info
    assert info["config"]["method"] == "simnpo_gdr" and len(info["losses"]) == 3
    assert info["memory"]["peak_rss_bytes"] > 0 and info["drift"]["mean_abs_dw"] > 0
    x = torch.tensor([[tok.bos_token_id, 5, 6]])
    assert torch.equal(m(x).logits, res.model(x).logits)


def test_early_stop_on_forget_recall(trained_tiny, tok, people):
    from amnesiac.metrics.qa import exact_match_recall

    assert exact_match_recall(trained_tiny, tok, people["forget"]).value > 0.5
    res = unlearn(_fresh(trained_tiny), people["forget"], people["retain"], tokenizer=tok, method="ga_gdr", lr=5e-3,
                  max_steps=60, early_stop_recall=0.5, early_stop_relative=True, early_stop_every=2, **FAST)
    assert res.info["stopped_early"] and res.info["steps"] < 60 and res.info["steps"] % 2 == 0
    es = res.info["early_stop"]
    assert es["monitor"][-1]["recall"] <= es["threshold"] < es["monitor_start"]


def test_raw_text_forget_set(trained_tiny, tok):
    texts = ["Alice Mora was born in Lisbon and works as a baker.", "Bruno Vale studied music in Oslo."]
    model = _fresh(trained_tiny)
    from amnesiac.core import score_texts

    before = score_texts(model, tok, texts).sum.sum()
    res = unlearn(model, texts, tokenizer=tok, method="ga", lr=3e-3, max_steps=3, **FAST)
    assert res.info["data"]["kind"] == "text"
    assert score_texts(res.model, tok, texts).sum.sum() < before


def test_lora_output_is_a_plain_model(trained_tiny, tok, people, tmp_path):
    from transformers import AutoModelForCausalLM

    res = unlearn(_fresh(trained_tiny), people["forget"], people["retain"], tokenizer=tok, out=tmp_path / "l",
                  method="npo_gdr", lr=5e-3, max_steps=3, lora_rank=4, reference="copy", **FAST)
    m = AutoModelForCausalLM.from_pretrained(tmp_path / "l")
    assert not any("lora" in k for k in m.state_dict())
    x = torch.tensor([[tok.bos_token_id, 5, 6, 7]])
    assert not torch.allclose(m(x).logits, trained_tiny(x).logits)
    assert res.info["trainable_params"] < sum(p.numel() for p in trained_tiny.parameters()) / 4


def test_cli_unlearn(trained_tiny, tok, people, tmp_path):
    from typer.testing import CliRunner

    from amnesiac.cli import app
    from amnesiac.models import save_model

    save_model(trained_tiny, tok, tmp_path / "t")
    for name, items in (("f", people["forget"]), ("r", people["retain"])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(i.to_json()) + "\n" for i in items))
    r = CliRunner().invoke(app, ["unlearn", "--model", str(tmp_path / "t"), "--forget", str(tmp_path / "f.jsonl"),
                                 "--retain", str(tmp_path / "r.jsonl"), "--method", "npo", "--regularizer", "klr",
                                 "--lr", "1e-3", "--max-steps", "2", "--out", str(tmp_path / "o"), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "o" / "unlearn.json").read_text())["regularizer"] == "klr"
    r = CliRunner().invoke(app, ["unlearn", "--model", str(tmp_path / "t"), "--forget", str(tmp_path / "f.jsonl"),
                                 "--method", "nope", "--out", str(tmp_path / "o2")])
    assert r.exit_code != 0 and "available" in r.output
    r = CliRunner().invoke(app, ["ls", "unlearn_methods"])
    assert r.exit_code == 0 and "simnpo" in r.output


def test_sure_suffix_and_config_object(trained_tiny, tok, people):
    from amnesiac.unlearn import UnlearnConfig

    cfg = UnlearnConfig(method="npo_gdr_sure", lr=1e-3, max_steps=2, progress=False, batch_size=4)
    res = unlearn(_fresh(trained_tiny), people["forget"], people["retain"], tokenizer=tok, config=cfg)
    assert res.info["sure"] and res.info["sure_mask"]["percentile"] == 90.0  # "_sure" → top 10 % of rows
    assert cfg.sure_percentile is None  # the caller's config is not mutated
    assert res.info["sure_mask"]["fraction_selected"] == pytest.approx(0.1, abs=0.02)
    with pytest.raises(UnlearnError, match="do not combine"):
        unlearn(_fresh(trained_tiny), people["forget"], people["retain"], tokenizer=tok, method="ga_sure",
                lora_rank=2, **FAST)


def test_top_level_unlearn_is_callable_even_after_the_subpackage_loaded(trained_tiny, tok, qa_people):
    """`from amnesiac import unlearn` is the subpackage once something imported it (e.g. the audit); it still
    runs the unlearning function."""
    import copy

    import amnesiac.audit  # noqa: F401  (imports amnesiac.unlearn, setting the package attribute)
    from amnesiac import unlearn

    r = unlearn(copy.deepcopy(trained_tiny), qa_people["forget"][:4], None, tokenizer=tok, method="ga", lr=1e-3,
                max_steps=1, batch_size=4, progress=False, device="cpu")
    assert r.info["steps"] == 1
