"""GGUF block formats as quantizers: bit-exact against the gguf package, codes, misfits, integration."""
from __future__ import annotations

import pytest
import torch

gguf = pytest.importorskip("gguf", reason="the gguf package is needed for GGUF formats: pip install gguf")

from amnesiac.attacks.quant import get_quantizer, quantize_model  # noqa: E402
from amnesiac.attacks.quant.gguf_backend import KINDS, GGUFQuantizer, _qtype, parse_gguf  # noqa: E402


def _weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(24, 128, generator=g) * 0.05
    w[1, :32] = 0.0  # all-zero block (d = 0)
    w[2, 32:64] = 0.3  # constant block
    w[3, 64:96] = -w[3, 64:96].abs()  # one-signed block
    w[4, 0] = 2.0  # outlier
    return w


def _reference(w, kind):
    t = _qtype(kind)
    return torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(w.numpy(), t), t).reshape(w.shape))


@pytest.mark.parametrize("kind", list(KINDS))
def test_codes_reproduce_gguf_bit_for_bit(kind):
    w = _weights()
    q = GGUFQuantizer(kind)
    ref = _reference(w, kind)
    qt = q.quantize(w)
    dq = qt.dequantize()
    assert torch.equal(dq.view(torch.int32), ref.view(torch.int32)), "decoded codes · scale (+ min) ≠ gguf dequantize"
    assert torch.equal(q(w), ref)
    bits = KINDS[kind][0]
    lo, hi = (-127, 127) if kind == "q8_0" else (0, 2 ** bits - 1)
    assert qt.codes.dtype == torch.int32 and int(qt.codes.min()) >= lo and int(qt.codes.max()) <= hi
    # the code is the rounded code coordinate, up to the clip at the range ends and because gguf rounds
    # with the fp32 d but stores fp16 d (|code| ≤ 127 × 2^-11 ≈ 0.06 steps for Q8_0)
    pos = q.position(w, qt)
    inside = (pos > lo + 0.5) & (pos < hi - 0.5) & (qt.step_flat() != 1)
    assert (pos[inside] - qt.codes_flat()[inside]).abs().max() <= 0.6


@pytest.mark.parametrize("kind", ["q4_1", "q8_0", "q4_0"])
def test_requantizing_on_grid_weights_is_identity(kind):
    """A model released in a GGUF format, dequantized, re-quantized to the same format: unchanged."""
    for seed in range(3):
        wq = GGUFQuantizer(kind)(_weights(seed))
        assert torch.equal(GGUFQuantizer(kind)(wq), wq)
        assert torch.equal(GGUFQuantizer(kind).quantize(wq).codes, GGUFQuantizer(kind).quantize(GGUFQuantizer(kind)(wq)).codes)


def test_misfit_rows():
    w = torch.randn(4, 48)
    with pytest.raises(ValueError, match="multiple of 32"):
        GGUFQuantizer("q4_1")(w)
    with pytest.raises(ValueError, match="multiple of 32"):
        GGUFQuantizer("q4_1", misfit="f16").quantize(w)
    assert torch.equal(GGUFQuantizer("q4_1", misfit="f16")(w), w.half().float())
    assert torch.equal(GGUFQuantizer("q8_0", misfit="keep")(w), w)


def test_factory_names_and_errors():
    q = get_quantizer("gguf", kind="q4_1")
    assert q.name == "gguf_q4_1" and q.bits == 4 and q.config()["backend"] == "gguf"
    assert get_quantizer("gguf", bits=8).kind == "q8_0"
    assert parse_gguf("GGUF_Q5_1").kind == "q5_1" and parse_gguf("q8_0").name == "gguf_q8_0"
    with pytest.raises(ValueError, match="blocks of 32"):
        get_quantizer("gguf", group=64, kind="q4_0")
    with pytest.raises(ValueError, match="unknown GGUF format"):
        get_quantizer("gguf", kind="q3_k")
    with pytest.raises(RuntimeError, match="llama"):
        q.native(None)


def test_fake_quant_straight_through():
    w = _weights().requires_grad_(True)
    q = GGUFQuantizer("q4_1")
    y = q.fake_quant(w)
    assert torch.allclose(y.detach(), q(w.detach()), rtol=0, atol=1e-6)  # w + (Q(w) − w): one rounding
    y.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def test_collapse_and_attack_on_released_q4_1_model(tok):
    """Target on the Q4_1 grid (a GGUF release), a drift far below half a step: every code collapses."""
    from amnesiac.attacks.collapse import collapse_diagnostics
    from amnesiac.attacks.quantize import quantize_attack
    from tests.conftest import make_tiny

    q = GGUFQuantizer("q4_1")
    target, _ = quantize_model(make_tiny(tok, hidden=64, inter=128), q)
    unlearned, _ = quantize_model(target, lambda w: w + 1e-6 * torch.randn_like(w))
    rep = collapse_diagnostics(target, unlearned, q)
    assert rep["quantizer"]["name"] == "gguf_q4_1"
    assert rep["overall"]["collapse_rate"] == 1.0
    assert rep["overall"]["grid_offset_mean"] < 0.01  # on grid (a normal model: ≈ 0.25)
    res = quantize_attack(unlearned, backend="gguf", kind="q4_1")
    for (n, a), b in zip(res.model.named_parameters(), target.parameters()):
        if n.endswith("proj.weight"):
            assert torch.equal(a, b), n
    assert res.record["config"]["name"] == "gguf_q4_1" and res.record["config"]["library_version"]
