"""In-place weight attacks: quantization, GPTQ / AWQ and relearning change the model itself and put back the
very bits that were loaded, from the saved safetensors or a spill file, also when the attack fails halfway;
the audit runs attacks through the registry (a toy attack registered here is run by it)."""
import random

import pytest
import torch

from amnesiac.attacks.base import AttackContext, AttackResult, attacked, auditable
from amnesiac.attacks.quant.deploy import deploy, deployed
from amnesiac.attacks.restore import Originals, model_tensors
from amnesiac.registry import register, registry

from tests.conftest import make_tiny


def _snap(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(model, snap) -> bool:
    sd = model.state_dict()
    return set(sd) == set(snap) and all(torch.equal(sd[k], snap[k]) for k in snap)


def _texts(n=24):
    from amnesiac.data import bios

    rng = random.Random(0)
    g = bios.generate(n_people=10, n_pretrain_people=5, seed=0)
    return [bios.biography(p, rng) for p in g["people"]][:n] + bios.filler_sentences(rng, n)


@pytest.fixture
def saved(tmp_path, tok):
    from amnesiac.models import save_model

    save_model(make_tiny(tok, seed=3), tok, tmp_path / "m")
    return tmp_path / "m"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_rtn_in_place_from_saved_weights_is_bit_exact(saved, tok, dtype):
    from amnesiac.models import load_model

    model, _ = load_model(saved, device="cpu", dtype=dtype)
    before = _snap(model)
    ref, _ = deploy(model, tok, "rtn4_g16")  # the copy path: what the in-place path must compute
    orig = Originals(model, saved)
    # every tensor is read back from the file (a fp32 file cast to bf16 on load casts the same way again)
    assert orig.spilled == 0 and len(orig.where) == len(model_tensors(model))
    with deployed(model, tok, "rtn4_g16", originals=orig) as (m, info):
        assert m is model and info["n_tensors"] == 14  # 2 layers × 7 Linear
        assert _same(model, ref.state_dict()) and not _same(model, before)
    assert _same(model, before)


def test_in_memory_model_spills_one_file_per_tensor_and_cleans_up(tiny_model, tok):
    before = _snap(tiny_model)
    orig = Originals(tiny_model)
    n = len(model_tensors(tiny_model))  # tied embedding and head: one tensor
    spill = orig._spill
    assert orig.spilled == n and len(list(spill.iterdir())) == n
    with deployed(tiny_model, tok, "q4_0", originals=orig):
        assert not _same(tiny_model, before)
    assert _same(tiny_model, before)
    orig.close()
    assert not spill.exists()
    with deployed(tiny_model, tok, "rtn3_g16"):  # no originals given: a spill of its own, removed afterwards
        pass
    assert _same(tiny_model, before)


def test_a_tensor_that_differs_from_the_file_is_spilled(saved, tok):
    from amnesiac.models import load_model

    model, _ = load_model(saved, device="cpu")
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] += 1.0  # the resident model no longer equals its file
    before = _snap(model)
    orig = Originals(model, saved)
    assert orig.spilled == 1 and orig.where["model.layers.0.mlp.up_proj.weight"][1] == "t"
    with deployed(model, tok, "rtn4_g16", originals=orig):
        pass
    assert _same(model, before)  # restored to the resident weights, not to the file's


@pytest.mark.parametrize("name", ["gptq4_g16", "awq4_g16"])
def test_calibrated_in_place_equals_the_copy_and_restores(saved, tok, name):
    from amnesiac.models import load_model

    model, _ = load_model(saved, device="cpu")
    before = _snap(model)
    ref, _ = deploy(model, tok, name, _texts(), n_calib=8, max_len=48)
    assert _same(model, before)  # the copy path leaves the model alone
    with deployed(model, tok, name, _texts(), originals=Originals(model, saved), n_calib=8, max_len=48) as (m, _):
        assert m is model and _same(model, ref.state_dict())  # AWQ also rescales norms: restored too
    assert _same(model, before)


def test_gptq_failing_halfway_leaves_no_quantized_model(saved, tok, monkeypatch):
    from amnesiac.attacks.quant import gptq
    from amnesiac.models import load_model

    model, _ = load_model(saved, device="cpu")
    before = _snap(model)
    calls = []
    real = gptq.gptq_weight

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return real(*a, **k)

    monkeypatch.setattr(gptq, "gptq_weight", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        with deployed(model, tok, "gptq4_g16", _texts(), originals=Originals(model, saved), n_calib=8, max_len=48):
            pass
    assert len(calls) == 3 and _same(model, before) and not model.training


def test_an_error_inside_the_block_restores_too(tiny_model, tok):
    before = _snap(tiny_model)
    with pytest.raises(KeyError):
        with deployed(tiny_model, tok, "rtn4_g16"):
            raise KeyError("measuring failed")
    assert _same(tiny_model, before)


def test_relearn_in_place_matches_the_copy_and_restores(saved, tok, qa_people):
    from amnesiac.attacks import apply_attack
    from amnesiac.models import load_model

    model, _ = load_model(saved, device="cpu")
    model.model.embed_tokens.weight.requires_grad_(False)  # a frozen parameter: frozen again afterwards
    before = _snap(model)
    kw = dict(forget=qa_people["forget"], fraction=0.5, steps=3, lr=1e-3, seed=0, evaluate=False)  # as the audit binds it
    ref = apply_attack("relearn", model, tok, **kw)
    assert ref.model is not model and _same(model, before)
    ctx = AttackContext(forget=qa_people["forget"], retain=[], seed=0, settings={"relearn_steps": 3, "relearn_lr": 1e-3},
                        originals=Originals(model, saved))
    with attacked("relearn", model, tok, ctx) as res:
        assert res.model is model and _same(model, ref.model.state_dict())
        assert res.record["weight_change"]["l2"] == pytest.approx(ref.record["weight_change"]["l2"], rel=1e-9)
        assert res.items == ref.items and 0 < len(res.items) < len(qa_people["forget"])
    assert _same(model, before) and not model.model.embed_tokens.weight.requires_grad and not model.training


@pytest.fixture
def toy_attack():
    """A registered, auditable weight attack that records the weights it was handed and zeroes them."""
    seen = []

    @register("attacks", "toy_zero")
    @auditable(lambda name: name.startswith("toy_zero"), lambda name, ctx: {"tag": name},
               vocabulary=lambda: ["toy_zero*"])
    def toy_zero(model, tok=None, tag="", originals=None):
        """Test-only: every weight set to zero (in place when handed originals)."""
        assert originals is not None, "the audit runs weight attacks in place"
        seen.append((tag, float(sum(t.double().abs().sum() for t in model.state_dict().values()))))
        with torch.no_grad():
            for t in model_tensors(model).values():
                t.zero_()
                if tag == "toy_zero_fail":
                    raise RuntimeError("toy attack failed halfway")
        return AttackResult(model, {"attack": "toy_zero"})

    yield seen
    registry("attacks").pop("toy_zero")


def test_the_audit_runs_a_newly_registered_attack(toy_attack, tok, qa_people, tmp_path):
    from amnesiac.audit import Audit, AuditConfig
    from amnesiac.models import save_model

    for name, seed in (("t", 1), ("u", 2)):
        save_model(make_tiny(tok, seed=seed), tok, tmp_path / name)
    cfg = AuditConfig(attacks=["toy_zero_a", "fp", "toy_zero_b"], n_boot=50, max_retain=4)
    s = Audit(str(tmp_path / "t"), str(tmp_path / "u"), qa_people["forget"][:4], qa_people["retain"], tmp_path / "out",
              config=cfg, log=lambda *a: None).run()
    assert s["attacks"] == ["toy_zero_a", "fp", "toy_zero_b"]
    assert [r["attack"] for r in s["recovery"]] == ["toy_zero_a", "fp", "toy_zero_b"]
    # per model: both toy calls were handed the same, unzeroed weights (the first call's zeros were undone)
    assert [t for t, _ in toy_attack] == ["toy_zero_a", "toy_zero_b"] * 2
    assert toy_attack[0][1] == toy_attack[1][1] > 0 and toy_attack[2][1] == toy_attack[3][1] > 0
    assert toy_attack[0][1] != toy_attack[2][1]
    # the zeroed models were measured: both are the same all-zero model, unlike the two fp models
    r = s["results"]
    assert r["target"]["toy_zero_a"]["forget_prob"] == r["unlearned"]["toy_zero_b"]["forget_prob"]
    assert r["target"]["fp"]["forget_prob"] != r["unlearned"]["fp"]["forget_prob"]
    with pytest.raises(ValueError, match="toy_zero"):  # the vocabulary lists it
        AuditConfig(attacks=["nope"])


def test_an_attack_failing_halfway_through_the_registry_restores(toy_attack, tiny_model, tok):
    before = _snap(tiny_model)
    with pytest.raises(RuntimeError, match="halfway"):
        with attacked("toy_zero_fail", tiny_model, tok, AttackContext(forget=[], retain=[])):
            pass
    assert _same(tiny_model, before)
