"""Conformance of the project's GPTQ and AWQ (amnesiac/attacks/quant/gptq.py, awq.py) with the reference code.

Not a test and not run in CI: it needs its own virtual environment with the reference packages
(benchmarks/README.md, "Conformance with the reference implementations"):

    python3 -m venv /work/venvs/conf && /work/venvs/conf/bin/pip install torch==2.13.0
    echo torch==2.13.0 > c.txt && /work/venvs/conf/bin/pip install -c c.txt gptqmodel llmcompressor
    /work/venvs/conf/bin/pip install --no-deps autoawq        # AutoAWQ's pure-torch quantizer only
    PYTHONPATH=. OMP_NUM_THREADS=1 /work/venvs/conf/bin/python benchmarks/conformance/gptq_awq.py

GPTQ — reference: gptqmodel's `GPTQ` module quantizer (the AutoGPTQ `fasterquant` lineage), act_group_aware
off, mse off. (1) Hessian: the same layer inputs through gptqmodel's add_batch and the project's Hessian
(compared after normalising by the trace: the two count samples differently). (2) Every Linear of the
project's true-sequential pipeline: the same weight W and the same H through both algorithms (codes,
scales, zero points, dequantized weights). (3) Model level: the project's pipeline run once with its own
algorithm and once with gptqmodel's per layer; dequantized weights and perplexity compared.

AWQ — reference: AutoAWQ 0.2.9's `AwqQuantizer.quantize()` block loop (scale search over 20 α with
x_mean / w_mean, scales normalised by √(max·min), folding by apply_scale, clip search, then its
`pseudo_quantize_tensor`), driven with the same block-0 inputs and the Llama scaling groups of
awq/models/llama.py. The project's awq_model runs on the same sequences (equal lengths, so AutoAWQ can
stack them). Compared: the chosen α per group, codes, dequantized weights, every folded parameter, perplexity.

Calibration: n sequences of L tokens (the tiny model: random ids, seeded; SmolLM2: consecutive chunks of a
seeded synthetic-biography corpus); perplexity on other chunks of the same kind. Writes
benchmarks/results/gptq_awq_conformance.json.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
import types
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
TINY = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=4, vocab_size=2048, tie_word_embeddings=False, max_position_embeddings=512)


# ----------------------------------------------------------------------------- models and data

def load(which: str, n: int, L: int, n_eval: int, smollm2: str):
    """(model, calibration chunks (n, L), evaluation chunks (n_eval, L), description)."""
    if which == "tiny":
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        m = LlamaForCausalLM(LlamaConfig(**TINY)).eval()
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, TINY["vocab_size"], (n + n_eval, L), generator=g)
        return m, ids[:n], ids[n:], "random Llama of the tiny xs preset's shape, random token ids"
    import random

    from amnesiac.data import bios
    from amnesiac.models import load_model

    m, tok = load_model(smollm2, device="cpu")
    d = bios.generate(n_people=60, n_pretrain_people=0, seed=7)
    rng = random.Random(0)
    text = "\n\n".join(bios.biography(p, rng) for p in d["people"] + d["holdout"] for _ in range(2))
    ids = tok(text, return_tensors="pt")["input_ids"][0]
    need = (n + n_eval) * L
    if ids.numel() < need:
        raise SystemExit(f"corpus has {ids.numel()} tokens, need {need}")
    ch = ids[:need].reshape(n + n_eval, L)
    return m.eval(), ch[:n], ch[n:], f"SmolLM2-135M-Instruct ({smollm2}), synthetic biographies"


@torch.no_grad()
def perplexity(model, chunks) -> float:
    nll, cnt = 0.0, 0
    for c in chunks:
        out = model(input_ids=c[None], labels=c[None])
        nll += float(out.loss) * (c.numel() - 1)
        cnt += c.numel() - 1
    return math.exp(nll / cnt)


def weight_diff(a, b) -> dict:
    """Over every parameter of two models: how many tensors are bit-identical, the largest |difference|."""
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    same = sum(torch.equal(pa[k], pb[k]) for k in pa)
    return {"tensors": len(pa), "identical": int(same),
            "max_abs": max(float((pa[k] - pb[k]).detach().abs().max()) for k in pa)}


# ----------------------------------------------------------------------------- GPTQ

def ref_gptq(W, H, nsamples, bits, group, sym, act_order, static, damp, block):
    """gptqmodel's GPTQ on weight W with Hessian H injected → (dequantized (R, C), scale (R, G), zero (R, G), g_idx)."""
    from gptqmodel.quantization.config import QuantizeConfig
    from gptqmodel.quantization.gptq import GPTQ

    R, C = W.shape
    lin = torch.nn.Linear(C, R, bias=False)
    lin.weight.data = W.detach().float().clone()
    cfg = QuantizeConfig(bits=bits, group_size=group or -1, sym=sym, desc_act=act_order, static_groups=static,
                         act_group_aware=False, damp_percent=damp, offload_to_disk=False)
    g = GPTQ(lin, cfg)
    g.quantizer.configure(perchannel=True)  # as gptqmodel's GPTQProcessor does
    g.H, g.nsamples = H.detach().float().clone(), nsamples
    Q, scale, zero, g_idx, _, _, used_damp, _ = g.quantize(blocksize=block)
    return Q, scale, zero, g_idx, used_damp


def ref_codes(Q, scale, zero, g_idx):
    idx = g_idx.long()
    return torch.round(Q / scale[:, idx] + zero[:, idx])


def hessian_check(model, calib) -> dict:
    """H of block 0's q_proj input, from gptqmodel's add_batch and the project's Hessian, same inputs."""
    from gptqmodel.quantization.config import QuantizeConfig
    from gptqmodel.quantization.gptq import GPTQ

    from amnesiac.attacks.quant.gptq import Hessian

    q = model.model.layers[0].self_attn.q_proj
    ref = GPTQ(copy.deepcopy(q), QuantizeConfig(bits=4, group_size=128, act_group_aware=False, offload_to_disk=False))
    mine = Hessian(q.in_features, "cpu")
    xs = []
    h = q.register_forward_hook(lambda m, a, o: xs.append((a[0].detach(), o.detach())))
    with torch.no_grad():
        for c in calib:
            model(input_ids=c[None], use_cache=False)
    h.remove()
    for x, o in xs:
        ref.add_batch(x, o)
        mine.add(x)
    Hr = ref.finalize_hessian().float()
    a, b = Hr / Hr.trace(), mine.H / mine.H.trace()
    return {"max_abs_diff_trace_normalised": float((a - b).abs().max()), "max_abs_trace_normalised": float(b.abs().max()),
            "ref_trace_over_project_trace": float(Hr.trace() / mine.H.trace()), "ref_nsamples": ref.nsamples,
            "project_sequences": mine.n, "project_tokens": mine.tokens}


def gptq_conformance(model, calib, evals, bits, group, act_order) -> dict:
    import amnesiac.attacks.quant.gptq as G
    from amnesiac.attacks.quant.calib import qtensor

    orig = G.gptq_weight
    per_layer: list[dict] = []

    def both(use_ref):
        def fn(W, H, bits, group, sym, act_order, static_groups, damp, block):
            qt, info = orig(W, H, bits, group, sym, act_order, static_groups, damp, block)
            Q, scale, zero, g_idx, used = ref_gptq(W, H, 10 ** 6, bits, group, sym, act_order, act_order, damp, block)
            codes = ref_codes(Q, scale, zero, g_idx)
            mine = qt.dequantize()
            per_layer.append({"codes_equal": float((codes == qt.codes_flat().to(codes.dtype)).float().mean()),
                              "n_codes_differ": int((codes != qt.codes_flat().to(codes.dtype)).sum()),
                              "scales_equal": bool(torch.equal(scale, qt.scale.reshape(scale.shape))),
                              "max_abs_deq_diff": float((Q - mine).abs().max()), "damp_ref": float(used),
                              "damp_project": info["damp"]})
            if not use_ref:
                return qt, info
            g = group if group and group < W.shape[1] else None
            return qtensor(codes, scale, zero, g), info
        return fn

    out = {}
    try:
        for label, use_ref in (("project", False), ("reference", True)):
            per_layer.clear()
            G.gptq_weight = both(use_ref)
            t = time.perf_counter()
            m, _, _ = G.gptq_model(model, [c[None] for c in calib], bits=bits, group=group, sym=True, act_order=act_order)
            out[label] = {"model": m, "wall_s": round(time.perf_counter() - t, 1), "layers": list(per_layer)}
    finally:
        G.gptq_weight = orig
    lay = out["project"]["layers"]  # the comparison on the project's own pipeline (each layer: same W, same H)
    return {"settings": {"bits": bits, "group": group, "sym": True, "act_order": act_order,
                         "static_groups_ref": act_order, "damp": 0.01, "block": 128, "true_sequential": True},
            "layers": len(lay), "layers_bit_exact": sum(x["n_codes_differ"] == 0 and x["max_abs_deq_diff"] == 0 for x in lay),
            "codes_differing": sum(x["n_codes_differ"] for x in lay),
            "max_abs_deq_diff": max(x["max_abs_deq_diff"] for x in lay),
            "all_scales_equal": all(x["scales_equal"] for x in lay),
            "damp_equal": all(abs(x["damp_ref"] - x["damp_project"]) < 1e-12 for x in lay),
            "models_project_vs_reference_pipeline": weight_diff(out["project"]["model"], out["reference"]["model"]),
            "ppl": {"project": perplexity(out["project"]["model"], evals), "reference": perplexity(out["reference"]["model"], evals)},
            "wall_s": {k: v["wall_s"] for k, v in out.items()}}


# ----------------------------------------------------------------------------- AWQ

def autoawq(model, calib, bits, group, duo, snapshot_fix=False):
    """AutoAWQ's own quantize() loop on a copy of `model`, export_compatible (scales and clips applied, weights
    not packed), then its pseudo_quantize_tensor on every Linear. → (model, {name: codes}, [α of each search]).

    On CPU AutoAWQ's _compute_best_scale keeps `org_sd = {k: v.cpu() …}`, which on CPU are the live parameters
    themselves, not copies: the first candidate's in-place `fc.weight.mul_(scales)` also changes org_sd, so every
    later candidate starts from W·s(α=0) and the module is left at W·s(α=0) after the search. Without duo
    scaling s(α=0) = 1 and nothing changes; with duo it does. snapshot_fix=True gives module2inspect a
    state_dict() that returns copies for the duration of the search (what a GPU run gets from .cpu())."""
    import awq.quantize.quantizer as AQ
    from awq.models.llama import LlamaAWQForCausalLM

    m = copy.deepcopy(model).eval()
    q = object.__new__(AQ.AwqQuantizer)
    q.awq_model = types.SimpleNamespace(get_layers_for_scaling=LlamaAWQForCausalLM.get_layers_for_scaling,
                                        move_embed=lambda model, device: None, model_type="llama")
    q.model, q.modules = m, m.model.layers
    q.w_bit, q.group_size, q.zero_point, q.version = bits, group, True, "gemm"
    q.duo_scaling, q.apply_clip, q.export_compatible = duo, True, True
    q.modules_to_not_convert, q.n_parallel_calib_samples, q.max_chunk_memory = [], None, 1024 ** 3
    with torch.no_grad():
        q.inps = m.model.embed_tokens(calib)  # the input of block 0 (AutoAWQ's Catcher)
    q.module_kwargs = {"position_ids": torch.arange(calib.shape[1])[None], "attention_mask": None, "use_cache": False}
    alphas: list[float | None] = []
    orig = q._compute_best_scale

    def spy(x, w_mean, x_mean, module2inspect, linears2scale, fp16_output, kwargs={}):
        if snapshot_fix:
            module2inspect.state_dict = lambda *a, **k: {n: v.clone() for n, v in
                                                         type(module2inspect).state_dict(module2inspect, *a, **k).items()}
        try:
            s = orig(x, w_mean, x_mean, module2inspect, linears2scale, fp16_output, kwargs)
        finally:
            if snapshot_fix:
                del module2inspect.state_dict
        alphas.append(None)  # which grid point AutoAWQ chose: the candidate that reproduces its scale exactly
        for k in range(20):
            r = k / 20
            c = (x_mean.pow(r) / (w_mean.pow(1 - r) + 1e-4) if duo else x_mean.pow(r)).clamp(min=1e-4).view(-1)
            if torch.equal((c / (c.max() * c.min()).sqrt()).cpu(), s.cpu()):
                alphas[-1] = r
                break
        return s
    q._compute_best_scale = spy
    q.quantize()
    codes = {}
    with torch.no_grad():
        for li, layer in enumerate(m.model.layers):
            for n, lin in layer.named_modules():
                if isinstance(lin, torch.nn.Linear):
                    w = lin.weight.data
                    wq, scales, zeros = q.pseudo_quantize_tensor(w)
                    wg = w.reshape(-1, group)
                    c = torch.clamp(torch.round(wg / scales.reshape(-1, 1)) + zeros.reshape(-1, 1), 0, 2 ** bits - 1)
                    codes[f"model.layers.{li}.{n}.weight"] = c.reshape(w.shape)
                    lin.weight.data = wq.reshape(w.shape)
    return m, codes, alphas


def awq_conformance(model, calib, evals, bits, group, duo, snapshot_fix=False) -> dict:
    from amnesiac.attacks.quant.awq import awq_model

    t = time.perf_counter()
    mine, my_codes, info = awq_model(model, [c[None] for c in calib], bits=bits, group=group, scheme="asym", clip=True, duo=duo)
    t_mine = time.perf_counter() - t
    t = time.perf_counter()
    ref, ref_codes_, ref_alpha = autoawq(model, calib, bits, group, duo, snapshot_fix)
    t_ref = time.perf_counter() - t
    my_alpha = [a for layer in info["alpha"].values() for a in layer.values()]
    per = {k: int((ref_codes_[k] != my_codes[k].codes_flat().to(ref_codes_[k].dtype)).sum()) for k in my_codes}
    n_diff = sum(per.values())
    n_all = sum(c.numel() for c in ref_codes_.values())
    return {"settings": {"bits": bits, "group": group, "scheme": "asym", "clip": True, "duo_scaling": duo, "n_grid": 20,
                         "reference_snapshot_fix": snapshot_fix}, "codes_differing_per_tensor": per,
            "n_scale_searches": len(ref_alpha), "alpha_equal": sum(x == y for x, y in zip(my_alpha, ref_alpha)),
            "alpha_project": my_alpha, "alpha_reference": ref_alpha,
            "codes_differing": n_diff, "codes_total": n_all, "tensors_all_codes_equal":
                sum(torch.equal(ref_codes_[k], my_codes[k].codes_flat().to(ref_codes_[k].dtype)) for k in my_codes),
            "tensors": len(my_codes), "models": weight_diff(mine, ref),
            "ppl": {"project": perplexity(mine, evals), "reference": perplexity(ref, evals)},
            "wall_s": {"project": round(t_mine, 1), "reference": round(t_ref, 1)}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="tiny,smollm2")
    ap.add_argument("--parts", default="gptq,awq")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--len", type=int, default=256)
    ap.add_argument("--n-eval", type=int, default=8)
    ap.add_argument("--awq-layers", type=int, default=4, help="SmolLM2: AWQ on the first k blocks (0: all 30)")
    ap.add_argument("--smollm2", default=str(Path("~/.cache/amnesiac/models/smollm2-135m-instruct").expanduser()))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gptq_awq_conformance.json"))
    a = ap.parse_args()
    torch.manual_seed(0)
    res = {}
    for which in a.models.split(","):
        model, calib, evals, what = load(which, a.n, a.len, a.n_eval, a.smollm2)
        r = {"what": what, "calib": [a.n, a.len], "eval": [a.n_eval, a.len], "ppl_fp": perplexity(model, evals)}
        if "gptq" in a.parts:
            r["hessian"] = hessian_check(model, calib)
            print(which, "hessian", r["hessian"], flush=True)
            for name, act in (("gptq4_g128", False), ("gptq4_g128_actorder", True))[: 2 if which == "tiny" else 1]:
                r[name] = gptq_conformance(model, calib, evals, 4, 128, act)
                print(which, name, {k: v for k, v in r[name].items()}, flush=True)
        if "awq" in a.parts:
            if which != "tiny" and a.awq_layers:  # AutoAWQ's search is slow on CPU: the first blocks only
                model = copy.deepcopy(model)
                model.model.layers = model.model.layers[: a.awq_layers]
                model.config.num_hidden_layers = a.awq_layers
                r["awq_model"] = f"the first {a.awq_layers} decoder blocks (then norm and head)"
                r["ppl_fp_awq_model"] = perplexity(model, evals)
            # AutoAWQ asserts in_features % group == 0: SmolLM2's 576 is not a multiple of 128, so g64 there
            g = 128 if all(lin.in_features % 128 == 0 for lin in model.modules() if isinstance(lin, torch.nn.Linear)) else 64
            runs = [(f"awq4_g{g}", False, False)]
            if which == "tiny":
                runs += [("awq4_g128_duo", True, False), ("awq4_g128_duo_snapshot_fix", True, True)]
            for name, duo, fix in runs:
                r[name] = awq_conformance(model, calib, evals, 4, g, duo, fix)
                print(which, name, r[name], flush=True)
        res[which] = r
        write(a.out, res)  # after every model: a stopped run keeps what it measured


def write(path, res):
    out = {"benchmark": "gptq_awq_conformance", "results": res, "seed": 0,
           "versions": {p: version(p) for p in ("torch", "transformers", "gptqmodel", "autoawq", "llmcompressor")},
           "when": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    prev = json.loads(Path(path).read_text()) if Path(path).exists() else {}
    if prev.get("results"):  # a run of one model keeps the other's record
        out["results"] = {**prev["results"], **res}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(out, indent=2, default=str) + "\n")
    print("wrote", path)


if __name__ == "__main__":
    main()
