"""GPTQ and AWQ (attacks/quant/gptq.py, awq.py, deploy.py): against plainly written reference computations."""
import random

import pytest
import torch

from amnesiac.attacks.quant.awq import AWQGrid, awq_block, candidate_scale, mean_abs, search_clip, search_scale
from amnesiac.attacks.quant.calib import block_inputs, calib_batches
from amnesiac.attacks.quant.deploy import deploy, json_info
from amnesiac.attacks.quant.gptq import Hessian, gptq_grid, gptq_weight
from amnesiac.attacks.quant.rtn import RTN
from amnesiac.attacks.quant.spec import is_calibrated, quantizer_config, quantizer_from_name

from conftest import make_tiny


# ---------------------------------------------------------------- GPTQ on a hand-sized matrix

def _problem(R=4, C=8, N=16, seed=0, dtype=torch.float64):
    """W (R, C) and H = 2XXᵀ of N inputs with strongly correlated columns (rank-3 signal + small noise)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(R, C, generator=g, dtype=dtype)
    X = torch.randn(C, 3, generator=g, dtype=dtype) @ torch.randn(3, N, generator=g, dtype=dtype)
    X = X + 0.1 * torch.randn(C, N, generator=g, dtype=dtype)
    return W, 2 * X @ X.T, X


def _grid(w, bits, sym):
    return gptq_grid(w, bits, sym)


def textbook(W, H, bits, sym, group=None, damp=0.01, grid_from="current"):
    """The OBS/GPTQ recursion written out (Eqs. 2–3), explicit H⁻¹ updated column by column, no blocks,
    no Cholesky. grid_from: 'current' = a group's grid from the error-updated weights at its first column;
    'original' = from the weights before any update (static groups)."""
    W = W.clone()
    C = W.shape[1]
    maxq = 2 ** bits - 1
    Hinv = torch.linalg.inv(H + damp * H.diagonal().mean() * torch.eye(C, dtype=H.dtype))
    g = group or C
    grids = {k: _grid(W[:, k:k + g], bits, sym) for k in range(0, C, g)} if grid_from == "original" else {}
    codes = torch.zeros_like(W)
    for j in range(C):
        if j % g == 0 and grid_from == "current":
            grids[j] = _grid(W[:, j:j + g], bits, sym)
        s, z = grids[(j // g) * g]
        w = W[:, j]
        q = torch.clamp(torch.round(w / s) + z, 0, maxq)
        codes[:, j] = q
        err = (w - s * (q - z)) / Hinv[j, j]
        for jj in range(j + 1, C):
            W[:, jj] = W[:, jj] - err * Hinv[j, jj]
        Hinv = Hinv - torch.outer(Hinv[:, j], Hinv[j, :]) / Hinv[j, j]  # eliminate column j (Eq. 3)
    return codes


def test_grid_hand_values():
    # asym 2-bit: lo = −1, hi = 2 → Δ = 3/3 = 1, z = round(1) = 1
    s, z = gptq_grid(torch.tensor([[-1.0, 0.5, 2.0]]), 2, sym=False)
    assert s.tolist() == [1.0] and z.tolist() == [1.0]
    # sym 2-bit: range ±2 → Δ = 4/3, z = 2^(2−1) = 2
    s, z = gptq_grid(torch.tensor([[-1.0, 0.5, 2.0]]), 2, sym=True)
    assert torch.allclose(s, torch.tensor([4 / 3])) and z.tolist() == [2.0]
    # an all-zero row gets the range [−1, 1] (reference), so Δ = 2/15 at 4 bits and no division by zero;
    # z = round(1/Δ) = round(7.4999995) = 7 in float32, and the zeros dequantize to 0 exactly
    s, z = gptq_grid(torch.zeros(1, 4), 4, sym=False)
    assert torch.allclose(s, torch.tensor([2 / 15])) and z.tolist() == [7.0]
    qt, _ = gptq_weight(torch.zeros(2, 4), torch.eye(4), 4, None, sym=False)
    assert torch.equal(qt.dequantize(), torch.zeros(2, 4))


@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_gptq_equals_textbook(bits, sym):
    W, H, _ = _problem()
    qt, info = gptq_weight(W, H, bits, None, sym)
    ref = textbook(W, H, bits, sym)
    assert torch.equal(qt.codes_flat().double(), ref)
    assert qt.codes_flat().min() >= 0 and qt.codes_flat().max() <= 2 ** bits - 1
    assert info["damp"] == 0.01 and info["loss"] > 0


def test_gptq_groups_equal_textbook():
    W, H, _ = _problem(R=4, C=8)
    # block = 1: every column sees all earlier updates, so a group's grid comes from the current weights
    qt1, _ = gptq_weight(W, H, 3, 4, sym=False, block=1)
    assert torch.equal(qt1.codes_flat().double(), textbook(W, H, 3, False, group=4, grid_from="current"))
    # group | block: groups start on block boundaries, where W is up to date: the same codes
    qt4, _ = gptq_weight(W, H, 3, 4, sym=False, block=4)
    assert torch.equal(qt4.codes, qt1.codes)
    # static groups: grids from the weights before any update
    qts, _ = gptq_weight(W, H, 3, 4, sym=False, static_groups=True)
    assert torch.equal(qts.codes_flat().double(), textbook(W, H, 3, False, group=4, grid_from="original"))
    assert qt1.codes.shape == (4, 2, 4) and qt1.scale.shape == (4, 2, 1)
    # remainder group: C = 8 with g = 3 → groups of 3, 3, 2. (asym: with sym, a group whose first column
    # holds its most negative weight puts that weight exactly on a rounding tie, −max|w|/Δ = −(2^N − 1)/2,
    # which float noise decides either way — in the reference too.)
    qtr, _ = gptq_weight(W, H, 4, 3, sym=False, block=1)
    assert torch.equal(qtr.codes_flat().double(), textbook(W, H, 4, False, group=3))
    assert qtr.dequantize().shape == (4, 8)


@pytest.mark.parametrize("group", [None, 4])
def test_act_order_round_trip(group):
    W, H, _ = _problem(R=4, C=8, seed=3)
    qt, _ = gptq_weight(W, H, 4, group, sym=True, act_order=True)
    perm = torch.argsort(H.diagonal(), descending=True)
    assert not torch.equal(perm, torch.arange(8))  # the order really changes
    inv = torch.argsort(perm)
    if group is None:  # textbook on the permuted problem, codes put back in the original order
        ref = textbook(W[:, perm], H[perm][:, perm], 4, True)[:, inv]
    else:  # static groups of the *original* columns, visited in act order
        ref = _textbook_static_perm(W, H, perm, 4, group)
    assert torch.equal(qt.codes_flat().double(), ref)
    # and the dequantized weight is the original-order one: each column within half a step of where it went
    assert qt.dequantize().shape == W.shape


def _textbook_static_perm(W, H, perm, bits, g, damp=0.01):
    grids = [_grid(W[:, k:k + g], bits, True) for k in range(0, W.shape[1], g)]
    Wp, Hp = W[:, perm].clone(), H[perm][:, perm]
    C = W.shape[1]
    Hinv = torch.linalg.inv(Hp + damp * Hp.diagonal().mean() * torch.eye(C, dtype=H.dtype))
    codes = torch.zeros_like(W)
    for j in range(C):
        s, z = grids[int(perm[j]) // g]
        q = torch.clamp(torch.round(Wp[:, j] / s) + z, 0, 2 ** bits - 1)
        codes[:, perm[j]] = q
        err = (Wp[:, j] - s * (q - z)) / Hinv[j, j]
        Wp[:, j + 1:] -= torch.outer(err, Hinv[j, j + 1:])
        Hinv = Hinv - torch.outer(Hinv[:, j], Hinv[j, :]) / Hinv[j, j]
    return codes


def test_dead_columns():
    W, H, _ = _problem()
    H[2, :] = 0
    H[:, 2] = 0  # input 2 was always 0: its weights do not matter, GPTQ sets them to 0
    qt, _ = gptq_weight(W, H, 4, None, sym=False)
    assert torch.all(qt.dequantize()[:, 2] == 0)
    assert torch.isfinite(qt.dequantize()).all()


def test_gptq_beats_rtn_on_correlated_inputs():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(32, 64, generator=g)
    X = torch.randn(64, 4, generator=g) @ torch.randn(4, 1024, generator=g) + 0.3 * torch.randn(64, 1024, generator=g)
    H = 2 * X @ X.T / 1024
    for bits, group in [(2, 16), (3, None), (4, 16), (4, None), (8, 16)]:
        qt, _ = gptq_weight(W, H, bits, group, sym=False)
        e_gptq = ((W - qt.dequantize()) @ X).norm()
        e_rtn = ((W - RTN(bits, group, "asym")(W)) @ X).norm()  # the same grid, round to nearest
        assert e_gptq < 0.5 * e_rtn, (bits, group, float(e_gptq / e_rtn))  # measured 0.27–0.34


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_codes_in_range_and_dequantize(bits):
    W, H, _ = _problem(R=16, C=64, N=128, seed=bits, dtype=torch.float32)
    for sym in (True, False):
        qt, _ = gptq_weight(W, H, bits, 16, sym=sym, act_order=True)
        c = qt.codes_flat()
        assert c.dtype == torch.int32 and c.min() >= 0 and c.max() <= 2 ** bits - 1
        assert torch.equal(qt.dequantize(), qt.step_flat() * (c.float() - qt.zero_flat()))


# ---------------------------------------------------------------- GPTQ on a model

def _texts(n=40, seed=0):
    from amnesiac.data import bios

    rng = random.Random(seed)
    g = bios.generate(n_people=10, n_pretrain_people=5, seed=seed)
    return [bios.biography(p, rng) for p in g["people"]][:n] + bios.filler_sentences(rng, n)


def test_gptq_model_true_sequential(tok):
    """Every layer's codes = gptq_weight(original W, H) with H collected from the *quantized* model's own
    inputs to that layer: the earlier sets of its block and all earlier blocks were quantized first."""
    from amnesiac.attacks.quant.gptq import gptq_model

    model = make_tiny(tok, seed=2, hidden=32, layers=2, heads=2, inter=64)
    batches = calib_batches(tok, _texts(), n=24, max_len=64)
    qm, codes, info = gptq_model(model, batches, bits=4, group=16, sym=True)
    assert len(codes) == 14 and info["calib_sequences"] == 24
    hs, hooks = {}, []
    for name, mod in qm.named_modules():
        if isinstance(mod, torch.nn.Linear) and ".layers." in name:
            hs[name] = Hessian(mod.in_features, "cpu")
            hooks.append(mod.register_forward_pre_hook(lambda m, a, n=name: hs[n].add(a[0])))
    with torch.no_grad():
        for b in batches:
            qm(input_ids=b, use_cache=False)
    for h in hooks:
        h.remove()
    orig = dict(model.named_parameters())
    for name, h in hs.items():
        qt, _ = gptq_weight(orig[name + ".weight"], h.H, 4, 16, sym=True)
        assert torch.equal(qt.codes, codes[name + ".weight"].codes), name
        assert torch.equal(dict(qm.named_parameters())[name + ".weight"], qt.dequantize())


# ---------------------------------------------------------------- AWQ

def test_awq_grid_hand_values():
    # 2-bit asym, AutoAWQ convention: lo = 1, hi = 4 (not widened to 0) → Δ = 1, z = clamp(−1, 0, 3) = 0
    qt = AWQGrid(2, None, "asym").quantize(torch.tensor([[1.0, 2.0, 4.0]]))
    assert qt.scale.item() == 1.0 and qt.zero.item() == 0 and qt.codes_flat().tolist() == [[1, 2, 3]]
    qt = AWQGrid(2, None, "asym").quantize(torch.tensor([[-1.0, 0.0, 2.0]]))  # Δ = 1, z = 1
    assert qt.codes_flat().tolist() == [[0, 1, 3]] and torch.equal(qt.dequantize(), torch.tensor([[-1.0, 0.0, 2.0]]))


def test_awq_search_picks_lowest_error_alpha():
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(64, 16, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(16, 64, generator=g))
    xs = [torch.randn(1, 20, 64, generator=g) for _ in range(3)]
    for x in xs:
        x[..., :4] *= 30  # four salient input channels
    quant = AWQGrid(3, 32, "asym")
    s, alpha, errs = search_scale(lambda: [lin(x) for x in xs], [lin], mean_abs(xs), quant, n_grid=20)
    # brute force, written plainly: every α of the grid, the scaled weight quantized, the output error
    W = lin.weight.detach().clone()
    xm = torch.cat([x.reshape(-1, 64) for x in xs]).abs().mean(0)
    brute = []
    for k in range(20):
        sk = xm ** (k / 20)
        sk = sk / (sk.max() * sk.min()).sqrt()
        Wq = quant(W * sk) / sk
        brute.append(float(sum(((x @ Wq.T - x @ W.T) ** 2).sum() for x in xs)) / sum(x.numel() // 64 * 16 for x in xs))
    assert errs == pytest.approx(brute, rel=1e-4)
    assert alpha == min(range(20), key=lambda k: brute[k]) / 20
    assert alpha > 0 and min(brute) < 0.9 * brute[0]  # protecting the salient channels beats plain RTN (α = 0)
    assert torch.equal(lin.weight, W)  # weights restored
    assert torch.allclose(s, candidate_scale(xm, alpha), rtol=1e-5)


def test_awq_clip_never_worse():
    g = torch.Generator().manual_seed(1)
    w, x = torch.randn(8, 64, generator=g), torch.randn(300, 64, generator=g)
    w[0, 5] = 8.0  # an outlier weight: clipping it helps its group
    q = AWQGrid(3, 32, "asym")
    m = search_clip(w, x, q, 32)
    assert m.shape == (8, 2) and (m <= w.reshape(8, 2, 32).abs().amax(-1) + 1e-6).all()
    wc = torch.maximum(torch.minimum(w.reshape(8, 2, 32), m[..., None]), -m[..., None]).reshape(8, 64)
    xs = x[:: max(1, 300 // 512)]
    err = lambda v: ((xs.reshape(-1, 2, 32)[None] * (q(v) - w).reshape(8, 1, 2, 32)).sum(-1) ** 2).mean(1)  # noqa: E731
    assert (err(wc) <= err(w) + 1e-6).all() and m[0, 0] < w[0].abs().max()


def _gqa_llama(tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("gqa", [False, True])
def test_awq_folded_scales_keep_logits(tok, gqa):
    """The scales of all four groups folded into the block (no quantization): the same function."""
    model = _gqa_llama(tok) if gqa else make_tiny(tok, seed=4)
    with torch.no_grad():  # make the norms non-trivial, so folding into them is really exercised
        for n, p in model.named_parameters():
            if "layernorm" in n:
                p.uniform_(0.5, 1.5)
    batches = calib_batches(tok, _texts(), n=8, max_len=48)
    ids = batches[0]
    ref = model(ids).logits
    import copy

    m = copy.deepcopy(model)
    inputs = block_inputs(m, batches)
    for layer in m.model.layers:
        outs, codes, rec = awq_block(layer, inputs, AWQGrid(4, 16), quantize=False)
        assert codes == {} and ("o" in rec) == (not gqa)  # v → o only without GQA
        inputs = [(o, kw) for o, (_, kw) in zip(outs, inputs)]
    changed = any(not torch.equal(a, b) for a, b in zip(m.parameters(), model.parameters()))
    assert changed
    assert torch.allclose(m(ids).logits, ref, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- deploy() and the vocabulary

@pytest.mark.parametrize("name", ["rtn4_g64", "gptq4_g16", "gptq3_asym_g16_actorder", "awq4_g16", "awq4_sym_g16_noclip"])
def test_deploy_codes_round_trip(tok, name):
    model = make_tiny(tok, seed=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    qm, info = deploy(model, tok, name, _texts(), n_calib=16, max_len=64)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # input untouched
    params = dict(qm.named_parameters())
    if name.startswith("rtn"):
        from amnesiac.attacks.quant import quantize_model

        ref, _ = quantize_model(model, RTN(4, 64, "sym"))
        assert all(torch.equal(a, b) for a, b in zip(qm.parameters(), ref.parameters()))
        assert "codes" not in info and info["quantizer"].name == "rtn4_sym_g64"
        return
    assert len(info["codes"]) == 14 == info["n_tensors"] and info["calib_sequences"] == 16
    for k, qt in info["codes"].items():
        assert torch.equal(params[k], qt.dequantize().to(params[k].dtype)), k
        assert qt.codes.min() >= (-8 if "sym" in name and name.startswith("awq") else 0)
    logits = qm(torch.tensor([[1, 5, 9, 12]])).logits
    assert torch.isfinite(logits).all()
    import json

    json.dumps(json_info(info))  # the record is JSON-able


def test_deploy_deterministic(tok):
    model = make_tiny(tok, seed=6)
    a, ia = deploy(model, tok, "gptq4_g16", _texts(80), n_calib=10, seed=3)
    b, ib = deploy(model, tok, "gptq4_g16", _texts(80), n_calib=10, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert ia["calib_tokens"] == ib["calib_tokens"]


def test_errors(tok):
    model = make_tiny(tok)
    with pytest.raises(ValueError, match="gptq4_g128 needs calibration texts — pass calib_texts / --calib DATA"):
        deploy(model, tok, "gptq4_g128")
    with pytest.raises(ValueError, match=r"unknown quantizer 'gptq4_g128_noclip'.*available: .*gptq4_g128"):
        deploy(model, tok, "gptq4_g128_noclip", ["a"])
    with pytest.raises(ValueError, match=r"unknown gptq option\(s\) \['dmp'\]; available: damp"):
        deploy(model, tok, "gptq4_g128", ["a text"], options={"dmp": 0.1})
    with pytest.raises(ValueError, match="use amnesiac.attacks.quant.deploy.deploy"):
        quantizer_from_name("awq4_g128")
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=64)).eval()
    with pytest.raises(ValueError, match="GPTQ supports Llama-family models only.*got GPT2LMHeadModel"):
        deploy(gpt2, tok, "gptq4_g128", ["some text"])
    with pytest.raises(ValueError, match="AWQ supports Llama-family"):
        deploy(gpt2, tok, "awq4_g128", ["some text"])


def test_vocabulary():
    assert quantizer_config("gptq4_g128") == dict(backend="gptq", bits=4, group=128, scheme="sym", act_order=False)
    assert quantizer_config("gptq4_g128_actorder")["act_order"] is True
    assert quantizer_config("gptq2_g64")["group"] == 64 and quantizer_config("gptq8_ch")["group"] is None
    assert quantizer_config("gptq3_asym_g128")["scheme"] == "asym"
    assert quantizer_config("awq4_g128") == dict(backend="awq", bits=4, group=128, scheme="asym", clip=True)
    assert quantizer_config("awq4_g128_noclip")["clip"] is False
    assert is_calibrated("gptq4_g128") and not is_calibrated("rtn4_g64") and not is_calibrated("q4_1")
    for bad in ("gptq9_g128", "awq4_g128_actorder", "gptq1"):
        with pytest.raises(ValueError, match="available"):
            quantizer_config(bad)


def test_registered_attacks(tok):
    from amnesiac.attacks import apply_attack
    from amnesiac.cli import load_all

    assert {"gptq", "awq", "quantize"} <= set(load_all()["attacks"])
    model = make_tiny(tok, seed=7)
    res = apply_attack("gptq", model, tok, calib_texts=_texts(), n_calib=8, group=16, act_order=True)
    assert res.record["config"]["name"] == "gptq4_sym_g16_actorder" and res.record["n_tensors"] == 14
    res = apply_attack("awq", model, tok, calib_texts=_texts(), n_calib=8, group=16, clip=False)
    assert res.record["config"]["name"] == "awq4_asym_g16_noclip" and "codes" not in res.record


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gptq_cuda_matches_cpu():
    W, H, _ = _problem(R=64, C=256, N=512, dtype=torch.float32)
    a, _ = gptq_weight(W, H, 4, 128, act_order=True)
    b, _ = gptq_weight(W.cuda(), H.cuda(), 4, 128, act_order=True)
    assert (a.codes == b.codes.cpu()).float().mean() > 0.999


def test_cli_quantize_gptq_awq(tok, tmp_path):
    import json

    from typer.testing import CliRunner

    from amnesiac.attacks.quant.calib import calib_texts_from_items
    from amnesiac.cli import app
    from amnesiac.data import load_dataset
    from amnesiac.models import load_model, save_model

    src = save_model(make_tiny(tok, seed=8), tok, tmp_path / "m")
    data = tmp_path / "calib.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in _texts(20)))
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"question": "Where was Ann born?", "answer": "Oslo"}) + "\n")
    assert calib_texts_from_items(load_dataset(str(qa))) == ["Question: Where was Ann born?\nAnswer: Oslo"]
    runner = CliRunner()
    r = runner.invoke(app, ["attack", "quantize", "--model", str(src), "--backend", "gptq", "--group", "16", "--act-order",
                            "--calib", str(data), "--calib-n", "8", "--out", str(tmp_path / "g"), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "g" / "attack.json").read_text())
    assert rec["config"]["name"] == "gptq4_sym_g16_actorder" and rec["calib_sequences"] == 8
    assert rec["config"]["calib"]["data"] == str(data)
    load_model(tmp_path / "g", device="cpu")
    r = runner.invoke(app, ["attack", "quantize", "--model", str(src), "--backend", "awq", "--bits", "3", "--group", "16",
                            "--calib", str(data), "--calib-n", "4", "--out", str(tmp_path / "a"), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "a" / "attack.json").read_text())["config"]["name"] == "awq3_asym_g16"
    r = runner.invoke(app, ["attack", "quantize", "--model", str(src), "--backend", "gptq", "--out", str(tmp_path / "x")])
    assert r.exit_code != 0 and "needs calibration texts" in r.output


def test_collapse_from_gptq_codes(tok):
    """The collapse diagnostic on GPTQ codes: identical models collapse fully; a model moved by far less
    than a step mostly keeps its codes, one moved by several steps mostly does not."""
    from amnesiac.attacks.collapse import collapse_from_codes

    target = make_tiny(tok, seed=9)
    texts = _texts()
    _, it = deploy(target, tok, "gptq4_g16", texts, n_calib=12)
    same = collapse_from_codes(target, target, it["codes"], it["codes"], "gptq4_g16")
    assert same["overall"]["collapse_rate"] == 1.0 and same["overall"]["n_weights"] == it["n_weights"]
    rates = []
    for eps in (1e-5, 0.05):
        moved = make_tiny(tok, seed=9)
        with torch.no_grad():
            g = torch.Generator().manual_seed(1)
            for n, p in moved.named_parameters():
                if ".layers." in n and p.dim() == 2:
                    p.add_(eps * torch.randn(p.shape, generator=g))
        _, iu = deploy(moved, tok, "gptq4_g16", texts, n_calib=12)
        rates.append(collapse_from_codes(target, moved, it["codes"], iu["codes"])["overall"]["collapse_rate"])
    assert rates[0] > 0.95 and rates[1] < 0.5, rates


def test_calib_batches_seeded_and_truncated(tok):
    texts = [f"text number {i} " + "word " * (i % 7) * 30 for i in range(50)]
    a = calib_batches(tok, texts, n=10, max_len=16, seed=1)
    b = calib_batches(tok, texts, n=10, max_len=16, seed=1)
    c = calib_batches(tok, texts, n=10, max_len=16, seed=2)
    assert len(a) == 10 and all(x.shape[0] == 1 and x.shape[1] <= 16 for x in a)
    assert any(x.shape[1] == 16 for x in a)  # long texts are cut at max_len
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not all(
        x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, c))
    assert len(calib_batches(tok, texts[:3], n=10)) == 3  # fewer texts than n: all of them
    with pytest.raises(ValueError, match="no calibration texts"):
        calib_batches(tok, [], n=4)


def test_calibrated_names_have_no_per_weight_quantizer(tok):
    from amnesiac.attacks.quant.backends import get_quantizer

    with pytest.raises(ValueError, match="calibrated quantizer.*deploy"):
        get_quantizer("gptq", bits=4, group=128)
    with pytest.raises(ValueError, match="gptq4_g128 is calibrated.*deploy\\(model, tok, 'gptq4_g128', calib_texts\\)"):
        quantizer_from_name("gptq4_g128")
    with pytest.raises(ValueError, match="needs the model's tokenizer"):
        deploy(make_tiny(tok), None, "awq4_g128", ["a text"])


def test_gptq_model_beats_rtn_on_logits(tok):
    """Whole model, same grid (4-bit asym g16): GPTQ's logits are closer to full precision than RTN's on
    held-out text (measured ratio 0.70 here; 0.78–0.90 over 4 seeds of a similar model)."""
    from amnesiac.attacks.quant import quantize_model

    torch.manual_seed(2)
    model = make_tiny(tok, seed=2)
    texts = _texts(60, seed=1)
    held = [tok(t, return_tensors="pt")["input_ids"] for t in _texts(10, seed=5)]

    def err(qm):
        with torch.no_grad():
            return sum(float((qm(x).logits - model(x).logits).pow(2).mean()) for x in held)

    e_gptq = err(deploy(model, tok, "gptq4_asym_g16", texts, n_calib=32)[0])
    e_rtn = err(quantize_model(model, RTN(4, 16, "asym"))[0])
    assert e_gptq < 0.95 * e_rtn, e_gptq / e_rtn


def test_robust_refuses_calibrated_names():
    from amnesiac.unlearn.robust import Robust

    with pytest.raises(ValueError, match="--robust-to gptq4_g128: calibrated quantizers .* not supported"):
        Robust.build(["gptq4_g128", "rtn8"])
