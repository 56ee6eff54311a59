"""Exact RTN (docs/science.md §3): hand-computed values, idempotence, error bound, remainder groups."""
import copy

import pytest
import torch

from amnesiac.attacks.quant import RTN, parse_rtn, quantize_model, released_quantized


def test_sym_per_channel_hand_values():
    # 3-bit symmetric: qmax = 3, Δ = max|w| / 3 = 1/3; w/Δ = [3, -1.2, 0.75, 0.3] → codes [3, -1, 1, 0]
    w = torch.tensor([[1.0, -0.4, 0.25, 0.1]])
    qt = RTN(3, None, "sym").quantize(w)
    assert qt.codes_flat().tolist() == [[3, -1, 1, 0]]
    assert torch.allclose(RTN(3)(w), torch.tensor([[1.0, -1 / 3, 1 / 3, 0.0]]))


def test_sym_groups_hand_values():
    # 2-bit symmetric, groups of 2: qmax = 1; group 1 Δ = 1 → [1, round(0.6)=1]; group 2 Δ = 2 → [-1, round(0.2)=0]
    w = torch.tensor([[1.0, 0.6, -2.0, 0.4]])
    q = RTN(2, 2, "sym")
    assert q.quantize(w).codes_flat().tolist() == [[1, 1, -1, 0]]
    assert torch.allclose(q(w), torch.tensor([[1.0, 1.0, -2.0, 0.0]]))


def test_asym_hand_values():
    # 2-bit asymmetric: lo = -1, hi = 3, Δ = 4/3, z = round(0.75) = 1; codes = round(w/Δ) + 1 = [1, 2, 3, 0]
    w = torch.tensor([[0.0, 1.0, 3.0, -1.0]])
    qt = RTN(2, None, "asym").quantize(w)
    assert qt.codes_flat().tolist() == [[1, 2, 3, 0]]
    assert torch.allclose(qt.dequantize(), torch.tensor([[0.0, 4 / 3, 8 / 3, -4 / 3]]))
    # an all-positive group: the range is widened to include 0 (GPTQ convention), so z = 0
    qp = RTN(2, None, "asym").quantize(torch.tensor([[1.0, 2.0, 3.0]]))
    assert qp.zero.item() == 0 and torch.allclose(qp.dequantize(), torch.tensor([[1.0, 2.0, 3.0]]))


@pytest.mark.parametrize("scheme", ["sym", "asym"])
@pytest.mark.parametrize("bits,group", [(2, 32), (3, 64), (4, None), (4, 128), (8, 64)])
def test_idempotent_and_error_bound(scheme, bits, group):
    torch.manual_seed(bits)
    w = torch.randn(16, 256) * 0.05
    q = RTN(bits, group, scheme)
    qt = q.quantize(w)
    d = qt.dequantize()
    assert (d - w).abs().le(qt.step_flat() / 2 + 1e-7).all()  # round to nearest: |Q(w) − w| ≤ Δ/2
    qt2 = q.quantize(d)
    assert torch.equal(qt2.codes, qt.codes)  # Q(Q(w)) = Q(w): same codes ...
    assert torch.allclose(qt2.dequantize(), d, atol=1e-7, rtol=0)  # ... and values (to float rounding)


def test_remainder_group_576_g128():
    # SmolLM2's width: 576 = 4 × 128 + 64 → a fifth group of the last 64 columns with its own scale
    torch.manual_seed(0)
    w = torch.randn(4, 576)
    w[:, 500] = 10.0  # an outlier in group 4 must not set the scale of the remainder group
    q = RTN(4, 128, "sym")
    qt = q.quantize(w)
    assert qt.codes.shape == (4, 5, 128) and q(w).shape == (4, 576)
    assert torch.allclose(qt.scale[:, 4, 0], w[:, 512:].abs().amax(1) / 7)
    assert torch.allclose(qt.scale[:, 3, 0], torch.full((4,), 10.0 / 7))
    assert (q(w) - w).abs().le(qt.step_flat() / 2 + 1e-6).all()
    qa = RTN(3, 128, "asym").quantize(w)  # edge padding leaves min/max of the remainder unchanged
    assert torch.allclose(qa.scale[:, 4, 0], (w[:, 512:].amax(1).clamp(min=0) - w[:, 512:].amin(1).clamp(max=0)) / 7)


def test_8bit_close_and_zero_rows():
    torch.manual_seed(0)
    w = torch.randn(32, 128)
    w[3] = 0.0  # an all-zero row must not divide by zero
    d = RTN(8)(w)
    assert torch.isfinite(d).all() and (d[3] == 0).all()
    assert ((d - w).norm() / w.norm()) < 0.01


def test_fake_quant_ste():
    w = torch.randn(8, 64, requires_grad=True)
    q = RTN(4, 32)
    y = q.fake_quant(w)
    assert torch.equal(y.detach(), q(w.detach()))
    (y * 3).sum().backward()
    assert torch.equal(w.grad, torch.full_like(w, 3.0))  # straight-through: ∂Q(w)/∂w = I


def test_parse_and_validation():
    assert parse_rtn("rtn4_asym_g64") == RTN(4, 64, "asym")
    assert parse_rtn("rtn8") == RTN(8, None, "sym")
    with pytest.raises(ValueError):
        RTN(1)
    with pytest.raises(ValueError):
        RTN(4, scheme="nf4")
    with pytest.raises(ValueError):
        parse_rtn("gptq4")


def test_quantize_model_selection(tiny_model):
    orig = copy.deepcopy(tiny_model.state_dict())
    q = RTN(3, 16)
    m, info = quantize_model(tiny_model, q)
    sd = m.state_dict()
    lin = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(sd[lin], q(orig[lin])) and not torch.equal(sd[lin], orig[lin])
    assert torch.equal(sd["model.embed_tokens.weight"], orig["model.embed_tokens.weight"])  # default: left alone
    assert torch.equal(sd["lm_head.weight"], orig["lm_head.weight"])
    assert all(torch.equal(v, orig[k]) for k, v in tiny_model.state_dict().items())  # input untouched
    assert info["n_tensors"] == 2 * 7
    m2, _ = quantize_model(tiny_model, q, embeddings=True, lm_head=True)
    assert torch.equal(m2.state_dict()["lm_head.weight"], q(orig["lm_head.weight"]))
    assert torch.equal(m2.state_dict()["model.embed_tokens.weight"], q(orig["model.embed_tokens.weight"]))
    rq = released_quantized(tiny_model, q)
    assert torch.equal(rq.state_dict()[lin], sd[lin])
    with pytest.raises(ValueError, match="no weights matched"):
        quantize_model(tiny_model, q, include="nothing_matches")


def test_gpt2_conv1d_weights_are_quantized_along_inputs():
    # transformers' Conv1D stores (in, out); groups must still run along the input dimension
    from transformers import GPT2Config, GPT2LMHeadModel

    from amnesiac.attacks import collapse_diagnostics

    torch.manual_seed(0)
    m = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2, n_positions=16)).eval()
    q = RTN(4, 16)
    qm, info = quantize_model(m, q)
    w = m.transformer.h[0].mlp.c_fc.weight  # (in 32, out 128)
    assert torch.equal(qm.transformer.h[0].mlp.c_fc.weight, q(w.T).T) and info["n_tensors"] == 4
    assert collapse_diagnostics(m, qm, q)["overall"]["collapse_rate"] == 1.0
