"""bitsandbytes as users load it (attacks/quant/bnb_load.py): the saved folder through transformers +
BitsAndBytesConfig, against the project's per-weight simulation (`bnb_fp4`, …) and its native() swap.

What is compared and why the tolerances are what they are:
- weights: the loaded model's 4-bit codes dequantize to exactly the simulated weights (same bitsandbytes
  quantize_4bit on the same float32 tensor), so the check is bit-exact;
- logits through bitsandbytes' float32 dequantize-then-matmul path (module in training mode; dropout is 0):
  the same weights, one float32 matmul → ≤ 1e-5 of the logit scale;
- logits through the inference path users run (eval mode): on a CPU with AVX512-BF16, bitsandbytes 0.50
  repacks the codes and multiplies in bfloat16 (activations and block absmax cast to bf16) whatever the
  compute dtype, so the deployed model differs from the float32 simulation by bf16 rounding (≈ 2⁻⁸ relative
  per product): ≤ 3 % of the logit scale is asserted; without AVX512-BF16 it is the float32 path (≤ 1e-5);
- int8 (load_in_8bit): transformers' default outlier threshold 6.0 and int8 activations, absent from the
  weight-only simulation: ≤ 10 % of the logit scale, as for the native int8 modules in test_attacks_backends.
"""
import copy

import pytest
import torch

from amnesiac.attacks.quant import available, deploy
from amnesiac.errors import UserError

pytestmark = pytest.mark.skipif(not available("bnb"), reason="bitsandbytes not installed: pip install 'amnesiac[bnb]'")

LOADED = ["bnb_fp4_load", "bnb_fp4_load_dq", "bnb_nf4_load", "bnb_nf4_load_dq"]


def _bf16_cpu() -> bool:
    import bitsandbytes.functional as F

    return bool(F.has_avx512bf16())


@pytest.fixture(scope="module")
def saved(tmp_path_factory, trained_tiny, tok):
    from amnesiac.models import load_model, save_model

    d = tmp_path_factory.mktemp("bnb") / "model"
    save_model(trained_tiny, tok, d)
    model, tok2 = load_model(d, device="cpu")
    return d, model, tok2


def _ids(tok):
    return tok(["Question: Where was she born?\nAnswer:", "Question: What does he do?\nAnswer: He"],
               return_tensors="pt", padding=True)


def _logits(m, batch):
    with torch.no_grad():
        return m(**batch).logits


@pytest.mark.parametrize("name", LOADED)
def test_loaded_4bit_weights_are_the_simulated_weights(saved, name):
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    _, model, tok = saved
    loaded, info = deploy(model, tok, name)
    sim, _ = deploy(model, tok, name.replace("_load", ""))
    assert info["mode"] == "loaded" and info["config"]["backend"] == "bnb_load" and info["tensors_checked"] > 0
    n = 0
    for mname, mod in loaded.named_modules():
        if isinstance(mod, bnb.nn.Linear4bit):
            qs = mod.weight.quant_state
            assert qs.quant_type == name.split("_")[1] and qs.blocksize == 64 and qs.nested == name.endswith("_dq")
            w = F.dequantize_4bit(mod.weight.data, qs)
            assert torch.equal(w, sim.get_submodule(mname).weight.detach()), mname
            n += 1
    assert n == 14  # 2 layers × (q, k, v, o, gate, up, down); the tied LM head stays full precision
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


@pytest.mark.parametrize("name", LOADED)
def test_loaded_logits_against_simulation_and_native_swap(saved, name):
    from amnesiac.attacks.quant import get_quantizer

    _, model, tok = saved
    batch = _ids(tok)
    sim = _logits(deploy(model, tok, name.replace("_load", ""))[0], batch)
    scale = sim.abs().max().item()
    fp32_path = deploy(model, tok, name)[0].train()  # bitsandbytes' dequantize + float32 matmul
    assert (_logits(fp32_path, batch) - sim).abs().max().item() <= 1e-5 * scale
    loaded = deploy(model, tok, name)[0]  # eval: the inference kernel users run
    la = _logits(loaded, batch)
    tol = 0.03 if _bf16_cpu() else 1e-5
    assert (la - sim).abs().max().item() <= tol * scale
    kind = name.split("_")[1]
    q = get_quantizer("bnb", 4, 64, kind=kind, double_quant=name.endswith("_dq"))
    swap = q.native(copy.deepcopy(model)).eval()  # the project's in-place swap runs the same kernel
    assert torch.allclose(_logits(swap, batch), la, atol=1e-6 * scale, rtol=0)


def test_load_in_8bit(saved):
    _, model, tok = saved
    batch = _ids(tok)
    la = _logits(deploy(model, tok, "bnb_int8_load")[0], batch)
    sim = _logits(deploy(model, tok, "bnb_int8")[0], batch)
    assert (la - sim).abs().max().item() <= 0.1 * sim.abs().max().item()


def test_the_audit_runs_loaded_bitsandbytes(saved, qa_people, tmp_path):
    from amnesiac.audit import Audit, AuditConfig

    d, _, _ = saved
    cfg = AuditConfig(attacks=["fp", "bnb_fp4", "bnb_fp4_load"], n_boot=200, max_retain=10)
    s = Audit(str(d), str(d), qa_people["forget"], qa_people["retain"], tmp_path / "a", config=cfg).run()
    rows = {r["attack"]: r for r in s["recovery"]}
    assert set(rows) == {"fp", "bnb_fp4", "bnb_fp4_load"} and not s["skipped_attacks"]
    assert 0.0 <= rows["bnb_fp4_load"]["value"] <= 1.0


def test_no_saved_folder_is_a_clear_error(saved, tok):
    from tests.conftest import make_tiny

    with pytest.raises(UserError, match="saved folder") as e:
        deploy(make_tiny(tok), tok, "bnb_fp4_load")  # built in memory: name_or_path is empty
    assert "save_pretrained" in str(e.value)
    _, model, tok2 = saved
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.model.layers[0].mlp.up_proj.weight.add_(1e-3)
    with pytest.raises(UserError, match="differs from its saved folder"):
        deploy(changed, tok2, "bnb_nf4_load")


def test_missing_bitsandbytes_names_the_extra(saved, monkeypatch):
    from amnesiac.attacks.quant import backends
    from amnesiac.audit import available_attacks

    monkeypatch.setattr(backends.importlib.util, "find_spec", lambda name: None)
    _, model, tok = saved
    with pytest.raises(backends.BackendMissing, match=r"amnesiac\[bnb\]"):
        deploy(model, tok, "bnb_fp4_load")
    keep, skipped = available_attacks(["fp", "bnb_nf4_load_dq"])
    assert keep == ["fp"] and "amnesiac[bnb]" in skipped["bnb_nf4_load_dq"]


def test_names_in_the_quantizer_vocabulary():
    from amnesiac.attacks.quant.spec import is_loaded, quantizer_config, quantizer_from_name

    assert quantizer_config("bnb_fp4_load") == {"backend": "bnb_load", "kind": "fp4", "double_quant": False}
    assert quantizer_config("BNB_NF4_LOAD_DQ") == {"backend": "bnb_load", "kind": "nf4", "double_quant": True}
    assert is_loaded("bnb_int8_load") and not is_loaded("bnb_fp4")
    with pytest.raises(ValueError, match="bnb_fp4_dq"):
        quantizer_from_name("bnb_fp4_load_dq")  # not per-weight: points to the simulated twin
    assert quantizer_from_name("bnb_fp4_dq").name == "bnb_fp4_b64_dq"
    with pytest.raises(UserError, match="module selection"):
        deploy(torch.nn.Linear(2, 2), None, "bnb_fp4_load", include="q_proj")
