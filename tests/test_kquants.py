"""GGUF K-quants (Q4_K, Q5_K, Q6_K) and llama.cpp's mixed file types (Q4_K_M, …): the rounding rule
against a scalar re-derivation and hand-computed super-blocks, codes ↔ bytes, gguf's dequantization,
the per-tensor type map, files that load back, the vocabulary and the errors. (Bit-exactness against
llama.cpp itself is benchmarks/conformance/kquants.py: it needs llama.cpp built.)"""
from __future__ import annotations

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf", reason="the gguf package is needed for GGUF formats: pip install gguf")

from amnesiac.attacks.quant.backends import get_quantizer  # noqa: E402
from amnesiac.attacks.quant.gguf_backend import GGUFQuantizer  # noqa: E402
from amnesiac.attacks.quant.gguf_mix import GGUFMix, model_types, tensor_types, use_more_bits  # noqa: E402
from amnesiac.attacks.quant.kquants import K_KINDS, KQuantizer, unpack_blocks  # noqa: E402

f32 = np.float32


def _weights(R=8, C=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(R, C, generator=g) * 0.05
    w[1, :256] = 0.0  # an all-zero super-block
    w[2, :32] = 0.3  # constant sub-block
    w[3, 32:64] = -w[3, 32:64].abs()  # one-signed sub-block
    w[4, 7] = 2.5  # outlier
    w[5, 16:32] = -0.2
    return w


def _gguf_dequant(raw, kind):
    return torch.from_numpy(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[kind.upper()]))


@pytest.mark.parametrize("kind", list(K_KINDS))
def test_codes_bytes_and_gguf_dequantization_agree(kind):
    w = _weights()
    q = KQuantizer(kind)
    raw, qt = q.pack(w), q.quantize(w)
    assert raw.dtype == np.uint8 and raw.shape == (8, 2 * K_KINDS[kind][2])
    back = unpack_blocks(raw, kind, tuple(w.shape))  # codes round-trip through the packed bytes
    assert torch.equal(back.codes, qt.codes) and torch.equal(back.scale, qt.scale)
    assert (back.minv is None) == (qt.minv is None) and (qt.minv is None or torch.equal(back.minv, qt.minv))
    ref = _gguf_dequant(raw, kind).reshape(w.shape)
    assert torch.equal(qt.dequantize().view(torch.int32), ref.view(torch.int32)), "codes·scale (+min) ≠ gguf's dequantize"
    assert torch.equal(q(w), ref)
    bits, g, _ = K_KINDS[kind]
    assert qt.codes.shape == (8, 512 // g, g) and int(qt.codes.min()) >= 0 and int(qt.codes.max()) <= 2 ** bits - 1
    assert q(w)[1, :256].abs().max() == 0  # the all-zero super-block comes back as zeros
    rel = ((q(w) - w).norm() / w.norm()).item()
    assert rel < {"q4_k": 0.12, "q5_k": 0.06, "q6_k": 0.03}[kind]  # more bits, less error


def test_requantizing_q4_k_and_q6_k_release_keeps_codes():
    for kind in ("q4_k", "q6_k"):
        q = KQuantizer(kind)
        wq = q(_weights(seed=1))
        assert (q.quantize(wq).codes == q.quantize(q(wq)).codes).float().mean() > 0.99


# --- a scalar re-derivation of ggml-quants.c's rule (one super-block, float32 scalars, C loop order) ---

def _ni(v):  # nearest_int: round half to even
    return int(np.rint(f32(v)))


def _qkx2_scalar(x, w, nmax, rmin, rdelta, nstep):
    mn, mx = min(x), max(x)
    sw, sx = f32(w[0]), f32(w[0]) * x[0]
    for i in range(1, len(x)):
        sw, sx = f32(sw + w[i]), f32(sx + w[i] * x[i])
    mn = f32(0) if mn > 0 else mn
    if mx == mn:
        return f32(0), -mn, [0] * len(x)
    iscale = f32(f32(nmax) / f32(mx - mn))
    scale = f32(f32(1) / iscale)
    L, best = [], f32(0)
    for xi, wi in zip(x, w):
        li = max(0, min(nmax, _ni(iscale * f32(xi - mn))))
        L.append(li)
        d = f32(f32(scale * f32(li)) + mn) - xi
        best = f32(best + f32(wi * f32(d * d)))
    for s in range(nstep + 1):
        isc = f32((f32(rmin) + f32(rdelta) * f32(s) + f32(nmax)) / f32(mx - mn))
        la = [max(0, min(nmax, _ni(isc * f32(xi - mn)))) for xi in x]
        sl = sl2 = sxl = f32(0)
        for xi, wi, li in zip(x, w, la):
            sl = f32(sl + f32(wi * f32(li)))
            sl2 = f32(sl2 + f32(f32(wi * f32(li)) * f32(li)))
            sxl = f32(sxl + f32(f32(wi * f32(li)) * xi))
        D = f32(f32(sw * sl2) - f32(sl * sl))
        if D > 0:
            ts = f32(f32(f32(sw * sxl) - f32(sx * sl)) / D)
            tm = f32(f32(f32(sl2 * sx) - f32(sl * sxl)) / D)
            if tm > 0:
                tm, ts = f32(0), f32(sxl / sl2)
            cur = f32(0)
            for xi, wi, li in zip(x, w, la):
                d = f32(f32(ts * f32(li)) + tm) - xi
                cur = f32(cur + f32(wi * f32(d * d)))
            if cur < best:
                L, best, scale, mn = la, cur, ts, tm
    return scale, -mn, L


def _q4_k_scalar(x):
    """quantize_row_q4_K_ref for one super-block → (d, dmin, ls, lm, L) as plain numbers."""
    scales, mins, Ls = [], [], []
    for j in range(8):
        xs = [f32(v) for v in x[32 * j:32 * j + 32]]
        s2 = f32(0)
        for v in xs:
            s2 = f32(s2 + f32(v * v))
        av = f32(np.sqrt(f32(s2 / f32(32))))
        sc, m, L = _qkx2_scalar(xs, [f32(av + abs(v)) for v in xs], 15, -1.0, 0.1, 20)
        scales.append(sc), mins.append(m), Ls.append(L)
    ms, mm = max([f32(0)] + scales), max([f32(0)] + mins)
    iS = f32(f32(63) / ms) if ms > 0 else f32(0)
    iM = f32(f32(63) / mm) if mm > 0 else f32(0)
    ls = [min(63, _ni(iS * s) & 0xFF) for s in scales]
    lm = [min(63, _ni(iM * m) & 0xFF) for m in mins]
    d, dmin = np.float16(f32(ms / f32(63))), np.float16(f32(mm / f32(63)))
    for j in range(8):
        dj = f32(f32(d) * f32(ls[j]))
        if dj:
            dm = f32(f32(dmin) * f32(lm[j]))
            Ls[j] = [max(0, min(15, _ni(f32(f32(f32(v) + dm) / dj)))) for v in x[32 * j:32 * j + 32]]
    return d, dmin, ls, lm, Ls


def _qx_scalar(x, nmax=32):
    amax, mx = f32(0), f32(0)
    for v in x:
        if abs(v) > amax:
            amax, mx = abs(v), v
    if amax < f32(1e-15):
        return f32(0), [0] * len(x)

    def fit(isc):
        la = [max(-nmax, min(nmax - 1, _ni(isc * v))) for v in x]
        slx = sl2 = f32(0)
        for v, li in zip(x, la):
            wv = f32(v * v)
            slx = f32(slx + f32(f32(wv * v) * f32(li)))
            sl2 = f32(sl2 + f32(f32(wv * f32(li)) * f32(li)))
        return la, slx, sl2

    la, slx, sl2 = fit(f32(f32(-nmax) / mx))
    L = [li + nmax for li in la]
    scale = f32(slx / sl2) if sl2 else f32(0)
    best = f32(scale * slx)
    for s in [i for i in range(-9, 10) if i]:
        la, slx, sl2 = fit(f32(-(f32(nmax) + f32(0.1) * f32(s)) / mx))
        if sl2 > 0 and f32(slx * slx) > f32(best * sl2):
            L, scale = [li + nmax for li in la], f32(slx / sl2)
            best = f32(scale * slx)
    return scale, L


def _q6_k_scalar(x):
    """quantize_row_q6_K_ref for one super-block (not all zero) → (d, sc, L)."""
    scales, Ls = [], []
    for j in range(16):
        s, L = _qx_scalar([f32(v) for v in x[16 * j:16 * j + 16]])
        scales.append(s), Ls.append(L)
    amax, ms = f32(0), f32(0)
    for s in scales:
        if abs(s) > amax:
            amax, ms = abs(s), s
    isc = f32(f32(-128) / ms)
    d = np.float16(f32(f32(1) / isc))
    sc = [min(127, _ni(isc * s)) for s in scales]
    for j in range(16):
        dj = f32(f32(d) * f32(sc[j]))
        if dj:
            Ls[j] = [max(-32, min(31, _ni(f32(f32(v) / dj)))) + 32 for v in x[16 * j:16 * j + 16]]
    return d, sc, Ls


@pytest.mark.parametrize("seed", [0, 1])
def test_vectorised_rule_equals_scalar_rederivation(seed):
    w = _weights(R=6, C=256, seed=seed)
    w[0] = torch.randn(256, generator=torch.Generator().manual_seed(9)) * 0.01 + 0.003  # mostly positive row
    for r in (0, 2, 4):
        x = w[r].numpy().astype(f32)
        d, dmin, ls, lm, L = _q4_k_scalar(x)
        qt = KQuantizer("q4_k").quantize(w[r:r + 1])
        assert qt.codes.reshape(8, 32).tolist() == L
        assert torch.equal(qt.scale.reshape(8), torch.tensor([f32(d) * f32(s) for s in ls]))
        assert torch.equal(qt.minv.reshape(8), -torch.tensor([f32(dmin) * f32(m) for m in lm]))
        d6, sc, L6 = _q6_k_scalar(x)
        qt6 = KQuantizer("q6_k").quantize(w[r:r + 1])
        assert qt6.codes.reshape(16, 16).tolist() == L6
        raw = KQuantizer("q6_k").pack(w[r:r + 1])[0]
        assert raw[192:208].view(np.int8).tolist() == sc and raw[208:210].view(np.float16)[0] == d6


def test_rounding_details_that_decide_bytes():
    """Two details found against llama.cpp's own bytes. (1) sqrtf is correctly rounded and torch's float32
    sqrt is not always: in this super-block (seed 0, N(0, 0.02²)) sub-block 6's weight av_x differs in the
    last bit, which moves one 6-bit minimum 35.49999 → 36. (2) A constant positive block has minima −0
    and llama.cpp keeps dmin = +0 (bytes 2–3 zero), not fp16 −0 (0x8000)."""
    torch.manual_seed(0)
    x = (torch.randn(256, 1024) * 0.02).reshape(-1, 256)[575]
    _, _, ls, lm, L = _q4_k_scalar(x.numpy())
    qt = KQuantizer("q4_k").quantize(x.reshape(1, 256))
    assert lm[2] == 35 and qt.codes.reshape(8, 32).tolist() == L
    raw = KQuantizer("q4_k").pack(torch.full((1, 256), 0.3))[0]
    assert raw[2:4].tolist() == [0, 0]


def test_hand_computed_q4_k_super_block():
    """Each sub-block is the ramp c·(i mod 16), c = 2^-6: the min/max grid fits exactly (iscale = 1/c,
    error 0, no other grid beats it), so q = i mod 16, all mins 0, every 6-bit scale 63 and
    d = fp16(c/63). Bytes by hand: scales 0–3 = 63 | (63>>4)<<6 = 255, 4–7 = 0, 8–11 = 63 & 15 = 15;
    qs byte l = q | q<<4 = 17·(l mod 16)."""
    c = 2.0 ** -6
    x = torch.tensor([c * (i % 16) for i in range(256)]).reshape(1, 256)
    raw = KQuantizer("q4_k").pack(x)[0]
    d = np.float16(f32(c) / f32(63))
    assert raw[0:2].view(np.float16)[0] == d and raw[2:4].view(np.float16)[0] == 0
    assert raw[4:16].tolist() == [255] * 4 + [0] * 4 + [15] * 4
    assert raw[16:].tolist() == [17 * (i % 16) for i in range(128)]
    qt = KQuantizer("q4_k").quantize(x)
    assert qt.codes.flatten().tolist() == [i % 16 for i in range(256)]
    assert torch.allclose(qt.dequantize(), x, atol=c * 0.01)


def test_hand_computed_q6_k_super_block():
    """Each 16-block is c·(j − 8), c = 2^-4 (all exact in float32): make_qx's first grid −32/max =
    −32/(−8c) fits exactly (l = 4(j − 8), scale c/4), every sub-block scale is c/4, so iscale = −512/c,
    d = −c/512 = −2^-13 (exact in fp16), sc = −128, q = 4(j − 8) + 32 = 4j. Bytes by hand: ql byte l
    = (4(l%16) & 15)·17, qh byte l = (4(l%16) >> 4)·0b01010101, scales 0x80, d = fp16(−2^-13)."""
    c = 2.0 ** -4
    x = torch.tensor([c * (i % 16 - 8) for i in range(256)]).reshape(1, 256)
    raw = KQuantizer("q6_k").pack(x)[0]
    assert raw[:128].tolist() == [((4 * (i % 16)) & 15) * 17 for i in range(128)]
    assert raw[128:192].tolist() == [((4 * (i % 16)) >> 4) * 85 for i in range(64)]
    assert raw[192:208].tolist() == [0x80] * 16
    assert raw[208:210].view(np.float16)[0] == np.float16(-(2.0 ** -13))
    qt = KQuantizer("q6_k").quantize(x)
    assert qt.codes.flatten().tolist() == [4 * (i % 16) for i in range(256)]
    assert torch.equal(qt.dequantize(), x)


def test_misfit_widths_fall_back_like_llama_cpp():
    w = torch.randn(4, 320) * 0.05  # 320 = 10·32, not a multiple of 256
    for kind, fb in (("q4_k", "q5_0"), ("q5_k", "q5_1"), ("q6_k", "q8_0")):
        q = KQuantizer(kind)
        assert q.stored_type(320) == fb and torch.equal(q(w), GGUFQuantizer(fb)(w))
        assert np.array_equal(q.pack(w), GGUFQuantizer(fb).pack(w))
        with pytest.raises(ValueError, match=f"not a multiple of 256.*{fb.upper()}"):
            KQuantizer(kind, misfit="error")(w)
    odd = torch.randn(4, 40)
    assert KQuantizer("q4_k").stored_type(40) == "f16" and torch.equal(KQuantizer("q4_k")(odd), odd.half().float())
    with pytest.raises(ValueError, match="F16"):
        KQuantizer("q4_k").pack(odd)
    with pytest.raises(ValueError, match="unknown K-quant"):
        KQuantizer("q3_k")


# --- the Q4_K_M type map (llama_tensor_get_type) ---

def _llama_tensors(n_layer, hidden, inter, vocab=1000, tied=True):
    t = [("token_embd.weight", (vocab, hidden))]
    for i in range(n_layer):
        t += [(f"blk.{i}.attn_norm.weight", (hidden,)), (f"blk.{i}.attn_q.weight", (hidden, hidden)),
              (f"blk.{i}.attn_k.weight", (hidden // 2, hidden)), (f"blk.{i}.attn_v.weight", (hidden // 2, hidden)),
              (f"blk.{i}.attn_output.weight", (hidden, hidden)), (f"blk.{i}.ffn_gate.weight", (inter, hidden)),
              (f"blk.{i}.ffn_up.weight", (inter, hidden)), (f"blk.{i}.ffn_down.weight", (hidden, inter)),
              (f"blk.{i}.ffn_norm.weight", (hidden,))]
    return t + [("output_norm.weight", (hidden,))] + ([] if tied else [("output.weight", (vocab, hidden))])


def test_q4_k_m_type_map_by_hand():
    # 8 layers: use_more_bits(i, 8) = i < 1 or i ≥ 7 or (i − 1) % 3 == 2 → layers 0, 3, 6, 7
    assert [i for i in range(8) if use_more_bits(i, 8)] == [0, 3, 6, 7]
    assert [i for i in range(30) if use_more_bits(i, 30)] == [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]
    t = tensor_types(_llama_tensors(8, 256, 768), "q4_k_m", 8)
    more = {0, 3, 6, 7}
    for i in range(8):
        assert t[f"blk.{i}.attn_v.weight"] == t[f"blk.{i}.ffn_down.weight"] == ("q6_k" if i in more else "q4_k")
        for n in ("attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up"):
            assert t[f"blk.{i}.{n}.weight"] == "q4_k"
        assert t[f"blk.{i}.attn_norm.weight"] == "f32"
    assert t["token_embd.weight"] == "q6_k"  # tied: the embedding is the output
    u = tensor_types(_llama_tensors(8, 256, 768, tied=False), "q4_k_m", 8)
    assert u["token_embd.weight"] == "q4_k" and u["output.weight"] == "q6_k"
    # SmolLM2-135M's shapes: 576-wide rows fall back (Q4_K → Q5_0, Q6_K → Q8_0), ffn_down (1536) stays K
    s = tensor_types(_llama_tensors(30, 576, 1536, 49152), "q4_k_m", 30)
    assert s["token_embd.weight"] == "q8_0" and s["blk.4.attn_q.weight"] == "q5_0"
    assert s["blk.5.attn_v.weight"] == "q8_0" and s["blk.4.attn_v.weight"] == "q5_0"
    assert s["blk.5.ffn_down.weight"] == "q6_k" and s["blk.4.ffn_down.weight"] == "q4_k"
    # Q4_K_S: the first 4 attn_v and the first n/8 ffn_down at Q5_K; Q6_K: everything Q6_K
    k = tensor_types(_llama_tensors(16, 256, 512), "q4_k_s", 16)
    assert [k[f"blk.{i}.attn_v.weight"] for i in range(6)] == ["q5_k"] * 4 + ["q4_k"] * 2
    assert [k[f"blk.{i}.ffn_down.weight"] for i in range(3)] == ["q5_k", "q5_k", "q4_k"]
    assert set(tensor_types(_llama_tensors(4, 256, 512), "q6_k", 4).values()) == {"q6_k", "f32"}
    with pytest.raises(ValueError, match="available: q4_k_s"):
        tensor_types([], "q3_k_m", 4)


@pytest.fixture(scope="module")
def k_llama(tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(5)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=False, rms_norm_eps=1e-5)
    return LlamaForCausalLM(cfg).eval()


def test_deploy_q4_k_m_and_the_file_that_loads_back(tmp_path, k_llama, tok):
    from amnesiac.attacks.quant.deploy import deploy
    from amnesiac.attacks.quant.gguf_io import write_gguf
    from amnesiac.models.load import load_model

    types = model_types(k_llama, "q4_k_m")  # 2 layers: use_more_bits(i, 2) = i ≥ 7·2/8 = 1
    assert types["model.layers.1.self_attn.v_proj.weight"] == types["model.layers.1.mlp.down_proj.weight"] == "q6_k"
    assert types["model.layers.0.self_attn.v_proj.weight"] == types["model.layers.0.mlp.down_proj.weight"] == "q4_k"
    assert types["model.layers.0.self_attn.q_proj.weight"] == "q4_k" and types["lm_head.weight"] == "q6_k"
    assert types["model.embed_tokens.weight"] == "q4_k" and types["model.norm.weight"] == "f32"
    m, info = deploy(k_llama, tok, "q4_k_m")
    sd, src = m.state_dict(), k_llama.state_dict()
    for k, v in src.items():
        if v.dim() == 2 and "embed" not in k and "lm_head" not in k:
            assert torch.equal(sd[k], KQuantizer(types[k])(v)), k
        else:
            assert torch.equal(sd[k], v), k  # Linear only: embedding and head untouched
    p = write_gguf(k_llama, tok, tmp_path / "k.gguf", ftype="q4_k_m")
    assert {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(p)).tensors}["blk.1.attn_v.weight"] == "Q6_K"
    m2, _ = load_model(p, device="cpu")
    full, _ = deploy(k_llama, tok, "q4_k_m_file")
    for k, v in full.state_dict().items():
        assert torch.equal(m2.state_dict()[k], v), k
    assert not torch.equal(full.state_dict()["lm_head.weight"], src["lm_head.weight"])


def test_collapse_diagnostic_binds_the_mix(k_llama):
    import copy

    from amnesiac.attacks.collapse import collapse_diagnostics

    u = copy.deepcopy(k_llama)
    with torch.no_grad():
        u.model.layers[0].mlp.up_proj.weight.add_(1e-4)
    rep = collapse_diagnostics(k_llama, u, GGUFMix("q4_k_m"), include=r"layers\.0\.mlp")
    assert set(rep["layers"]) == {f"model.layers.0.mlp.{n}_proj.weight" for n in ("gate", "up", "down")}
    assert rep["layers"]["model.layers.0.mlp.gate_proj.weight"]["collapse_rate"] == 1.0
    assert rep["layers"]["model.layers.0.mlp.up_proj.weight"]["collapse_rate"] < 1.0


def test_vocabulary_and_refusals(k_llama):
    from amnesiac.attacks.quant.spec import is_quantizer, quantizer_config, quantizer_from_name

    for name in ("q4_k", "q5_k", "q6_k", "q4_k_s", "q4_k_m", "q5_k_m", "gguf_q4_k_m", "q4_k_m_file", "q6_k_file"):
        assert is_quantizer(name), name
    assert quantizer_config("q4_k_m") == {"backend": "gguf", "kind": "q4_k_m"}
    assert isinstance(quantizer_from_name("q6_k"), KQuantizer) and quantizer_from_name("q6_k").name == "gguf_q6_k"
    assert isinstance(quantizer_from_name("q4_k_m"), GGUFMix)
    with pytest.raises(ValueError, match="q4_k_m"):
        quantizer_config("q4_k_x")
    with pytest.raises(ValueError, match="per tensor"):
        GGUFMix("q4_k_m")(torch.zeros(4, 256))
    with pytest.raises(ValueError, match="unknown GGUF format.*q4_k_m"):
        get_quantizer("gguf", kind="q3_k_l")
    with pytest.raises(ValueError, match="gguf_q4_k uses blocks of 32"):  # its sub-blocks; 128 is not a Q4_K grouping
        get_quantizer("gguf", kind="q4_k", group=128)
    with pytest.raises(ValueError, match="Llama-architecture"):
        model_types(type("M", (), {"config": type("C", (), {"model_type": "gpt2"})()})(), "q4_k_m")


def test_robust_to_refuses_a_mix_and_takes_a_k_quant():
    from amnesiac.unlearn.robust import Robust

    with pytest.raises(ValueError, match="mixes formats per tensor"):
        Robust.build("q4_k_m")
    assert isinstance(Robust.build("q4_k").quantizers["q4_k"], KQuantizer)
