"""K-quant conformance: the project's Q4_K / Q5_K / Q6_K rule and Q4_K_M / … type map against llama.cpp.

Not a test (it needs llama.cpp): run it with the project's interpreter and point --llama-python at a
second interpreter where llama.cpp's Python binding is installed (it compiles llama.cpp from source:
`python -m venv V && V/bin/pip install llama-cpp-python`, with CMAKE_ARGS="-DGGML_NATIVE=OFF" for the
portable build; time that install and pass the seconds as --build-seconds to have them recorded).

First the rounding rule alone: llama.cpp's ggml_quantize_chunk (libggml-base, shipped with the binding)
and the project's packer on varied synthetic tensors, block by block. Then for each model: the project writes an F32 .gguf (gguf_io.write_gguf), llama.cpp quantizes it with
`llama_model_quantize` (the library call the llama-quantize tool makes) to each file type without an
importance matrix, and every tensor of llama.cpp's file is compared with the project's: the type
(gguf_mix.tensor_types) and the raw block bytes (kquants / gguf's legacy quantizers applied to the
same F32 data). Models: two tiny random Llamas (one tied with 256-wide rows, one untied with 320-wide
attention rows that must fall back) with a few planted edge cases (zero / constant sub-blocks, an
outlier), and with --smollm2 SmolLM2-135M-Instruct from the amnesiac cache.

    python benchmarks/conformance/kquants.py --llama-python /path/to/venv/bin/python [--smollm2]
Writes benchmarks/results/kquants_conformance.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FTYPES = {"q4_k_m": 15, "q4_k_s": 14, "q5_k_m": 17, "q5_k_s": 16, "q6_k": 18}  # llama.h LLAMA_FTYPE_MOSTLY_*
QUANTIZE = """
import ctypes, sys, llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = int(sys.argv[3]); p.nthread = 1
rc = llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p))
sys.exit(rc)
"""


def tiny_models(seed: int = 0):
    from amnesiac.data import bios
    from amnesiac.models.tiny import build_llama
    from amnesiac.models.tokenizer import train_tokenizer

    import random

    data = bios.generate(n_people=20, n_pretrain_people=30, seed=123)
    rng = random.Random(0)
    corpus = [bios.biography(p, rng) for p in data["people"] + data["pretrain"]] + bios.filler_sentences(rng, 200)
    tok = train_tokenizer(corpus, vocab_size=600)
    out = {}
    for name, kw in {"tiny-tied-256": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=8,
                                           num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
                     "tiny-untied-320": dict(hidden_size=320, intermediate_size=512, num_hidden_layers=5,
                                             num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False)}.items():
        torch.manual_seed(seed)
        m = build_llama(kw, tok).eval()
        with torch.no_grad():  # planted edge cases: zero and constant sub-blocks, a one-signed block, an outlier
            w = m.model.layers[0].mlp.down_proj.weight
            w[0, :256] = 0.0
            w[1, :32] = 0.25
            w[2, 32:64] = -w[2, 32:64].abs()
            w[3, 5] = 3.0
            w[4, 16:32] = -0.5
        out[name] = (m, tok)
    return out


GGML_TYPE = {"q5_0": 6, "q5_1": 7, "q8_0": 8, "q4_k": 12, "q5_k": 13, "q6_k": 14}  # ggml.h enum ggml_type
BLOCK_BYTES = {"q5_0": (32, 22), "q5_1": (32, 24), "q8_0": (32, 34), "q4_k": (256, 144), "q5_k": (256, 176),
               "q6_k": (256, 210)}


def synthetic(lib_dir: str, seed: int = 0) -> dict:
    """The rule alone on varied data: ggml's own ggml_quantize_chunk (libggml-base, no imatrix) vs the
    project's packer, block by block."""
    import ctypes

    from amnesiac.attacks.quant.gguf_mix import quantizer_for

    lib = ctypes.CDLL(str(Path(lib_dir) / "libggml-base.so"))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    g = torch.Generator().manual_seed(seed)
    data = {"normal 0.02": torch.randn(512, 1024, generator=g) * 0.02,
            "student-t 2 dof": torch.distributions.StudentT(2.0).sample((512, 1024)) * 0.01,
            "sparse 10%": torch.where(torch.rand(128, 512, generator=g) < 0.1, torch.randn(128, 512, generator=g), 0.0),
            "grid k/8, k in [-8, 8)": torch.randint(-8, 8, (64, 256), generator=g).float() / 8,
            "uniform positive": torch.rand(128, 512, generator=g) * 0.1,
            "row-scaled 1e-4..1e2": torch.randn(64, 512, generator=g) * torch.logspace(-4, 2, 64)[:, None],
            "constant 0.3": torch.full((8, 256), 0.3)}
    out = {}
    for name, w in data.items():
        x = np.ascontiguousarray(w.numpy().astype(np.float32))
        R, C = x.shape
        for kind, t in GGML_TYPE.items():
            blk, nb = BLOCK_BYTES[kind]
            ref = np.zeros((R, C // blk * nb), np.uint8)
            lib.ggml_quantize_chunk(t, x.ctypes.data, ref.ctypes.data, 0, R, C, None)
            ours = quantizer_for(kind).pack(w)
            diff = (ours.reshape(-1, nb) != ref.reshape(-1, nb)).any(1)
            out[f"{name} / {kind}"] = {"blocks": int(diff.size), "blocks_identical": int((~diff).sum())}
            print(f"synthetic {name:24s} {kind:5s} identical blocks {int((~diff).sum())}/{diff.size}", flush=True)
    return out


def smollm2():
    from amnesiac.io import amnesiac_home
    from amnesiac.models.load import load_model

    return load_model(str(amnesiac_home() / "models" / "smollm2-135m-instruct"), device="cpu")


def _tensors(path: Path) -> dict:
    from gguf import GGUFReader

    r = GGUFReader(str(path))
    return {t.name: (t.tensor_type.name.lower(), np.asarray(t.data), tuple(int(x) for x in reversed(t.shape)))
            for t in r.tensors}


def compare(f32: dict, ref: dict, ftype: str, n_layer: int, llama_70b: bool = False) -> dict:
    """Per tensor: llama.cpp's type vs the project's choice, and the packed bytes."""
    from amnesiac.attacks.quant.gguf_mix import quantizer_for, tensor_types

    plan = tensor_types([(n, s) for n, (_, _, s) in f32.items()], ftype, n_layer, llama_70b)
    rows, wall = [], 0.0
    for name, (_, data, shape) in f32.items():
        rtype, rdata, _ = ref[name]
        row = {"tensor": name, "shape": list(shape), "llama_type": rtype, "project_type": plan[name]}
        if rtype in ("f32", "f16") or plan[name] != rtype:
            ours = np.asarray(data, np.float32).astype(np.float32 if rtype == "f32" else np.float16)
            row["bytes_identical"] = bool(plan[name] == rtype and rtype in ("f32", "f16") and np.array_equal(
                ours.view(np.uint8).reshape(-1), np.ascontiguousarray(rdata).view(np.uint8).reshape(-1)))
            rows.append(row)
            continue
        t0 = time.perf_counter()
        ours = quantizer_for(rtype).pack(torch.from_numpy(np.array(data, dtype=np.float32).reshape(shape)))
        wall += time.perf_counter() - t0
        ref_b = rdata.reshape(ours.shape)
        row["bytes_identical"] = bool(np.array_equal(ours, ref_b))
        if not row["bytes_identical"]:
            from gguf import GGMLQuantizationType, quants

            q = GGMLQuantizationType[rtype.upper()]
            a, b = quants.dequantize(ours, q), quants.dequantize(ref_b, q)
            bs = {"q4_k": 144, "q5_k": 176, "q6_k": 210, "q8_0": 34, "q5_0": 22, "q5_1": 24}[rtype]
            ob, rb = ours.reshape(-1, bs), ref_b.reshape(-1, bs)
            row.update(blocks_differing=int((ob != rb).any(1).sum()), blocks=int(ob.shape[0]),
                       max_abs_dequant_diff=float(np.abs(a - b).max()))
        rows.append(row)
    quantized = [r for r in rows if r["llama_type"] not in ("f32", "f16")]
    types = {}
    for r in rows:
        types[r["llama_type"]] = types.get(r["llama_type"], 0) + 1
    return {"ftype": ftype, "n_tensors": len(rows), "types_agree": sum(r["llama_type"] == r["project_type"] for r in rows),
            "quantized_tensors": len(quantized), "bytes_identical": sum(r["bytes_identical"] for r in quantized),
            "llama_types": types, "project_pack_wall_s": round(wall, 3),
            "differing": [r for r in rows if not r["bytes_identical"] or r["llama_type"] != r["project_type"]]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llama-python", required=True, help="interpreter with llama-cpp-python installed")
    ap.add_argument("--smollm2", action="store_true", help="also SmolLM2-135M-Instruct from the amnesiac cache")
    ap.add_argument("--ftypes", default=",".join(FTYPES))
    ap.add_argument("--smollm2-ftypes", default="q4_k_m,q4_k_s,q6_k", help="file types checked on SmolLM2 (slower)")
    ap.add_argument("--build-seconds", type=float, default=None, help="how long the llama.cpp build took (recorded)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results" / "kquants_conformance.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    from _machine import machine

    from amnesiac.attacks.quant.gguf_io import write_gguf

    llama_version = subprocess.run([args.llama_python, "-c", "import llama_cpp; print(llama_cpp.__version__)"],
                                   capture_output=True, text=True, check=True).stdout.strip()
    lib_dir = subprocess.run([args.llama_python, "-c", "import llama_cpp, os; print(os.environ.get('LLAMA_CPP_LIB_PATH') "
                              "or os.path.join(os.path.dirname(llama_cpp.__file__), 'lib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    synth = synthetic(lib_dir)
    models = tiny_models()
    if args.smollm2:
        models["smollm2-135m-instruct"] = smollm2()
    res = {"what": "project K-quants vs llama.cpp llama_model_quantize (no imatrix), raw block bytes per tensor",
           "seed": 0, "llama_cpp_python": llama_version, "llama_cpp_build_seconds": args.build_seconds,
           "machine": machine(), "synthetic": synth, "models": {}}
    with tempfile.TemporaryDirectory() as td:
        for mname, (model, tok) in models.items():
            f32 = write_gguf(model, tok, Path(td) / f"{mname}-f32.gguf", ftype="f32")
            src = _tensors(f32)
            cfg = model.config
            big = cfg.num_hidden_layers == 80 and cfg.num_attention_heads != cfg.num_key_value_heads
            res["models"][mname] = {"n_params": sum(p.numel() for p in model.parameters()),
                                    "hidden": cfg.hidden_size, "intermediate": cfg.intermediate_size,
                                    "layers": cfg.num_hidden_layers, "tied": bool(cfg.tie_word_embeddings), "ftypes": {}}
            for ft in (args.smollm2_ftypes if mname.startswith("smollm2") else args.ftypes).split(","):
                out = Path(td) / f"{mname}-{ft}.gguf"
                t0 = time.perf_counter()
                p = subprocess.run([args.llama_python, "-c", QUANTIZE, str(f32), str(out), str(FTYPES[ft])],
                                   capture_output=True, text=True)
                if p.returncode:
                    raise SystemExit(f"llama_model_quantize failed for {mname} {ft}:\n{p.stderr[-2000:]}")
                llama_s = time.perf_counter() - t0
                r = compare(src, _tensors(out), ft, cfg.num_hidden_layers, big)
                r["llama_quantize_wall_s"] = round(llama_s, 3)
                res["models"][mname]["ftypes"][ft] = r
                print(f"{mname:24s} {ft:7s} types {r['types_agree']}/{r['n_tensors']}  bytes identical "
                      f"{r['bytes_identical']}/{r['quantized_tensors']}  {r['llama_types']}", flush=True)
                out.unlink()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
