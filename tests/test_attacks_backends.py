"""Real quantization backends (optional extras): each installed one quantizes a tiny Llama, the model
still generates, native modules agree with the dequantized copy, and two libraries implementing the
same scheme agree. A missing library is skipped with its install hint."""
import copy

import pytest
import torch

from amnesiac.attacks.quant import RTN, BackendMissing, available, get_quantizer, quantize_model
from amnesiac.core import generate_greedy

CASES = [("quanto", 8, {}), ("quanto", 4, {}), ("quanto", 2, {}),
         ("hqq", 8, {}), ("hqq", 4, {}), ("hqq", 3, {}), ("hqq", 2, {}),
         ("torchao", 8, {}), ("torchao", 4, {}), ("torchao", 3, {}), ("torchao", 2, {}),
         ("bnb", 8, {"kind": "int8"}), ("bnb", 4, {"kind": "nf4"}), ("bnb", 4, {"kind": "fp4"})]


def _need(backend):
    if not available(backend):
        from amnesiac.attacks.quant.backends import INSTALL

        pytest.skip(f"{backend} not installed: {INSTALL[backend][1]}")


@pytest.mark.parametrize("backend,bits,kw", CASES, ids=[f"{b}-{n}-{k.get('kind', '')}" for b, n, k in CASES])
def test_backend_quantizes_and_generates(tok, backend, bits, kw):
    _need(backend)
    from tests.conftest import make_tiny

    model = make_tiny(tok, layers=1)  # hidden 32, 7 Linear layers: HQQ's optimiser is slow on CPU
    q = get_quantizer(backend, bits, 32 if backend == "bnb" else 16, **kw)  # bnb blocks ≥ 32
    deq, info = quantize_model(model, q)
    w0 = model.model.layers[0].mlp.up_proj.weight
    w1 = deq.model.layers[0].mlp.up_proj.weight
    err = ((w1 - w0).norm() / w0.norm()).item()
    assert 0 < err < {8: 0.02, 4: 0.3, 3: 0.5, 2: 1.0}[bits]
    outs = generate_greedy(deq, tok, ["Question: Who?\nAnswer:"], max_new_tokens=4)
    assert isinstance(outs[0], str)
    # native low-bit modules compute with the same weights (bnb int8 also rounds activations to int8)
    ids = torch.tensor([[tok.bos_token_id, 5, 17, 42, 9]])
    nat = q.native(copy.deepcopy(model))
    with torch.no_grad():
        a, b = deq(ids).logits, nat(ids).logits
    tol = 0.1 if kw.get("kind") == "int8" else 1e-2
    assert (a - b).abs().max().item() < tol * max(1.0, a.abs().max().item())
    assert isinstance(generate_greedy(nat, tok, ["Question: Who?\nAnswer:"], max_new_tokens=3)[0], str)


def test_quanto_int8_equals_rtn8_per_channel():
    _need("quanto")
    torch.manual_seed(0)
    w = torch.randn(48, 96) * 0.02
    assert torch.allclose(get_quantizer("quanto", 8)(w), RTN(8, None, "sym")(w), atol=1e-7, rtol=0)


def test_hqq8_and_torchao8_near_rtn8():
    # near-identical schemes, different details (HQQ optimises zero/scale; torchao divides absmax by 127.5,
    # not 127): each within one 8-bit step of the RTN variant closest to it
    torch.manual_seed(0)
    w = torch.randn(32, 128) * 0.02
    for be, scheme in (("hqq", "asym"), ("torchao", "sym")):
        if available(be):
            step = RTN(8, 64, scheme).quantize(w).step_flat()
            assert ((get_quantizer(be, 8, 64)(w) - RTN(8, 64, scheme)(w)).abs() <= step * 1.01).all(), be


def test_missing_backend_hint(monkeypatch):
    import amnesiac.attacks.quant.backends as B

    monkeypatch.setattr(B.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BackendMissing, match=r"pip install 'amnesiac\[hqq\]'"):
        get_quantizer("hqq", 4, 64)
    with pytest.raises(ValueError, match="unknown quantization backend"):
        get_quantizer("nosuch", 4)
    with pytest.raises(ValueError, match="calibrated quantizer"):  # gptq/awq exist, but only through deploy()
        get_quantizer("gptq", 4)
    with pytest.raises(ValueError, match="no 3|8, 4 and 2"):
        get_quantizer("quanto", 3) if available("quanto") else (_ for _ in ()).throw(ValueError("8, 4 and 2"))
