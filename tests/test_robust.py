"""Quantization-aware unlearning (docs/science.md §2b): quantizer names, the fake-quant view equals the attack
bit for bit, straight-through gradients, robustness of forgetting to re-quantization, saved artefacts."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from amnesiac.attacks.quant.apply import quantize_model, released_quantized
from amnesiac.attacks.quant.backends import available
from amnesiac.attacks.quant.spec import parse_names, quantizer_config, quantizer_from_name
from amnesiac.unlearn import UnlearnError, unlearn
from amnesiac.unlearn.robust import Robust, _noise_step

FAST = dict(progress=False, batch_size=4)
ALWAYS = ["rtn8", "rtn4_g64", "rtn4_g128_asym", "rtn3_g64", "rtn4_sym_ch", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0"]
OPTIONAL = {"hqq4": "hqq", "quanto4": "quanto", "bnb_nf4": "bnb", "torchao4": "torchao"}


@pytest.fixture(scope="module")
def people(qa_people):
    return {"forget": qa_people["forget"], "retain": qa_people["retain"][:24]}


def test_quantizer_names():
    assert quantizer_config("Q4_1") == dict(backend="gguf", kind="q4_1")
    assert quantizer_config("gguf_q8_0") == dict(backend="gguf", kind="q8_0")
    assert quantizer_config("rtn4_g128") == dict(backend="rtn", bits=4, group=128, scheme="sym")
    assert quantizer_config("rtn4_g128_asym") == dict(backend="rtn", bits=4, group=128, scheme="asym")
    assert quantizer_config("rtn3_asym_ch") == dict(backend="rtn", bits=3, group=None, scheme="asym")
    assert quantizer_config("hqq4")["backend"] == "hqq"
    assert parse_names("q4_1, rtn8,q4_1,") == ["q4_1", "rtn8"]
    with pytest.raises(ValueError, match="available: rtn8"):
        quantizer_config("q3_k")
    with pytest.raises(ValueError, match="unknown quantizer"):
        parse_names(["q4_1", "int4"])


def _x(tok):
    return torch.tensor([[tok.bos_token_id, 5, 6, 7, 8, 9, 10, 11]])


@pytest.mark.parametrize("name", ALWAYS + list(OPTIONAL))
def test_quantized_view_is_the_attack_bit_for_bit(name, trained_tiny, tok):
    if name in OPTIONAL and not available(OPTIONAL[name]):
        pytest.skip(f"backend {OPTIONAL[name]} not installed")
    model = copy.deepcopy(trained_tiny)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = quantizer_from_name(name)
    attacked, info = quantize_model(model, q)
    rb = Robust.build(name)
    rb.bind(model)
    assert len(rb._targets) == info["n_tensors"]
    with torch.no_grad(), rb.quantized(name):
        inside = model(_x(tok)).logits
        for k, v in attacked.state_dict().items():
            assert torch.equal(model.state_dict()[k], v), k
    assert torch.equal(inside, attacked(_x(tok)).logits)
    for k, v in model.state_dict().items():  # latent weights restored bit for bit
        assert torch.equal(v, before[k]), k
    fq = getattr(q, "fake_quant", None)  # the quantizer's own STE op (RTN, GGUF) agrees with the view
    if fq is not None:
        w = model.model.layers[0].mlp.down_proj.weight
        assert torch.equal(fq(w), q(w))


def test_straight_through_gradient_is_the_quantized_models_gradient(trained_tiny, tok, people):
    """STE: ∂L(Q(θ))/∂θ := ∂L/∂W at W = Q(θ) (∂Q/∂θ ≈ I): equal to the gradient of the attacked copy."""
    from amnesiac.data import qa_prompt

    its = people["forget"][:4]
    batch = tok([qa_prompt(i.question) + " " + i.answer for i in its], return_tensors="pt", padding=True)

    def loss_of(m):
        return m(**batch, labels=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)).loss

    model = copy.deepcopy(trained_tiny)
    rb = Robust.build("q4_1")
    rb.bind(model)
    with rb.quantized("q4_1"):
        loss_of(model).backward()
    ref, _ = quantize_model(trained_tiny, quantizer_from_name("q4_1"))
    loss_of(ref).backward()
    grads = dict(ref.named_parameters())
    n = 0
    for t in rb._targets:
        g = dict(model.named_parameters())[t.name].grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
        assert torch.allclose(g, grads[t.name].grad, atol=1e-7, rtol=1e-5), t.name
        n += 1
    assert n == 14  # 2 layers × (q, k, v, o, gate, up, down); embeddings/head stay full precision


def test_noise_view_is_sub_step_and_seeded(trained_tiny):
    model = copy.deepcopy(trained_tiny)
    rb = Robust.build(None, noise=0.5, seed=3)
    rb.bind(model)
    w = model.model.layers[1].self_attn.o_proj.weight
    w0 = w.detach().clone()
    step = _noise_step(w0)  # 4-bit sym g64: max|w_g| / 7
    assert torch.allclose(step[0, :64], w0[0, :64].abs().max().expand(64) / 7)
    with rb.noisy(5):
        d1 = (w - w0).detach().clone()
    with rb.noisy(5):
        d2 = (w - w0).detach().clone()
    assert torch.equal(w, w0) and torch.equal(d1, d2) and d1.abs().sum() > 0
    assert (d1.abs() <= 0.25 * step * (1 + 1e-6)).all()  # |u| ≤ σ/2 = 0.25 steps


def test_robust_errors(trained_tiny, tok, people):
    with pytest.raises(UnlearnError, match="robust_to"):
        unlearn(copy.deepcopy(trained_tiny), people["forget"], people["retain"], tokenizer=tok,
                method="npo_klr_robust", max_steps=1, **FAST)
    with pytest.raises(UnlearnError, match="unknown quantizer"):
        unlearn(copy.deepcopy(trained_tiny), people["forget"], people["retain"], tokenizer=tok,
                method="npo_klr", robust_to="q4_9", max_steps=1, **FAST)


def test_robust_outputs_latent_quantized_and_gguf(trained_tiny, tok, people, tmp_path):
    from transformers import AutoModelForCausalLM

    res = unlearn(copy.deepcopy(trained_tiny), people["forget"], people["retain"], tokenizer=tok,
                  out=tmp_path / "u", method="ga_gdr_robust", robust_to="q4_1,rtn8", lr=3e-3, max_steps=3, **FAST)
    info = res.info["robust"]
    assert info["robust_to"] == ["q4_1", "rtn8"] and info["n_views"] == 2
    latent = AutoModelForCausalLM.from_pretrained(tmp_path / "u")
    for fmt in ("q4_1", "rtn8"):
        qm = AutoModelForCausalLM.from_pretrained(tmp_path / "u" / f"quantized-{fmt}")
        expect, _ = quantize_model(latent, quantizer_from_name(fmt))
        for k, v in expect.state_dict().items():
            assert torch.equal(qm.state_dict()[k], v), (fmt, k)
    assert (tmp_path / "u" / "quantized-q4_1" / "model-q4_1.gguf").stat().st_size > 0
    assert "gguf" not in info["quantized"]["rtn8"]


def test_robust_with_lora_and_sure(trained_tiny, tok, people):
    for extra in (dict(lora_rank=4, reference="copy"), dict(sure_percentile=80.0)):
        model = copy.deepcopy(trained_tiny)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        res = unlearn(model, people["forget"], people["retain"], tokenizer=tok, method="npo_gdr", lr=5e-3,
                      robust_to="rtn4_g64", max_steps=3, **extra, **FAST)
        assert res.info["robust"]["n_tensors"] == 14
        changed = [n for n, p in res.model.named_parameters() if not torch.equal(p, before[n])]
        assert changed


def test_lora_view_quantizes_the_merged_weight(trained_tiny, tok):
    from amnesiac.unlearn import lora as lora_mod

    model = lora_mod.wrap(copy.deepcopy(trained_tiny), 4)
    with torch.no_grad():  # non-zero adapters so the merged weight differs from the base
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    merged = copy.deepcopy(model).merge_and_unload()
    expect, _ = quantize_model(merged, quantizer_from_name("rtn4_g64"))
    rb = Robust.build("rtn4_g64")
    rb.bind(model)
    with torch.no_grad(), rb.quantized("rtn4_g64"):
        got = model(_x(tok)).logits
    assert torch.allclose(got, expect(_x(tok)).logits, atol=1e-5)  # Q − s·BA + s·BA: one float rounding


@pytest.mark.slow
def test_robust_forgetting_survives_requantization_of_an_on_grid_target(trained_tiny, tok, people):
    """Released-quantized case (§1b): target on the RTN 4-bit g64 grid. Plain NPO_KLR at a small lr forgets at
    full precision but re-quantization snaps it back; --robust-to the grid keeps it forgotten."""
    from amnesiac.metrics.qa import exact_match_recall

    q = quantizer_from_name("rtn4_g64")
    target = released_quantized(trained_tiny, q)
    f0 = exact_match_recall(target, tok, people["forget"]).value
    assert f0 >= 0.5

    def run(**kw):  # same seed and stopping rule: stop once the monitored forget recall reaches 0
        res = unlearn(copy.deepcopy(target), people["forget"], people["retain"], tokenizer=tok, method="npo_klr",
                      lr=1e-3, max_steps=60, early_stop_recall=0.0, early_stop_every=2, **kw, **FAST)
        qm = quantize_model(res.model, q)[0]
        return (exact_match_recall(res.model, tok, people["forget"]).value,
                exact_match_recall(qm, tok, people["forget"]).value, exact_match_recall(qm, tok, people["retain"]).value)

    plain_fp, plain_q, _ = run()
    rob_fp, rob_q, rob_retain_q = run(robust_to="rtn4_g64")
    # measured (seed 0, 12 forget items): plain 0.00 → 0.50 after re-quantization; robust 0.00 → 0.00
    assert plain_q > 1.2 * plain_fp + 1e-9, (plain_fp, plain_q)  # the plain method comes back
    assert rob_q <= 1.2 * rob_fp + 1e-9, (rob_fp, rob_q)
    assert rob_retain_q >= 0.5  # the shipped (quantized) model keeps most retain knowledge (measured 0.75)


@pytest.mark.parametrize("method", ["ga", "npo_klr", "simnpo_gdr", "idkdpo", "rmu"])
def test_every_method_composes_with_robust(method, trained_tiny, tok, people):
    model = copy.deepcopy(trained_tiny)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    res = unlearn(model, people["forget"], people["retain"], tokenizer=tok, method=f"{method}_robust",
                  robust_to="q8_0", robust_noise=0.5, lr={"rmu": 2e-2}.get(method, 3e-3), max_steps=2,
                  rmu_c=20.0, rmu_alpha=1.0, **FAST)
    assert res.info["robust"]["n_views"] == 2 and all(np.isfinite(r["loss"]) for r in res.info["losses"])
    assert any(not torch.equal(p, before[n]) for n, p in res.model.named_parameters())


def test_sweep_configs_validate_robust_names():
    from amnesiac.sweep import SweepConfig
    from amnesiac.sweep_offset import OffsetSweepConfig

    SweepConfig(robust_to="rtn4_g64").check()
    for cfg in (SweepConfig(robust_to="q9_9"), OffsetSweepConfig(robust_to="int3")):
        with pytest.raises(ValueError, match="unknown quantizer"):
            cfg.check()


def test_smollm2_protocol_has_robust_recipes():
    from amnesiac.reproduce.smollm2 import SmolConfig, recipes

    names = {r["name"]: r for r in recipes(SmolConfig(robust=True, robust_lr=1e-4, robust_steps=16))}
    assert set(names) == {"GA_GDR", "GA_GDR_SURE", "GA_GDR_ROBUST", "NPO_KLR", "NPO_KLR_SURE", "NPO_KLR_ROBUST"}
    r = names["NPO_KLR_ROBUST"]
    assert (r["robust_to"], r["lr"], r["steps"], r["sure_percentile"]) == ("q4_1", 1e-4, 16, None)
    assert "robust_to" not in names["NPO_KLR"] and not any(n.endswith("_ROBUST") for n in
                                                          (x["name"] for x in recipes(SmolConfig())))
