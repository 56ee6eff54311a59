"""Wall time of GPTQ and AWQ (attacks/quant/gptq.py, awq.py) on a tiny Llama and on SmolLM2-135M.

usage: OMP_NUM_THREADS=1 python benchmarks/gptq_awq_speed.py [--models tiny,smollm2] [--n 16] [--len 256]
       [--threads 1] [--methods gptq4_g128,awq4_g128]

SmolLM2-135M is used when it is already in the cache (`amnesiac models fetch smollm2`); this script
never downloads. Without it, `smollm2` times a Llama of SmolLM2-135M's exact shapes (30 layers, hidden
576, MLP 1536, 9 heads / 3 KV heads, vocab 49 152, tied embeddings) with random weights: the work of
both algorithms depends on the shapes and the token count, not on the weight values (the record says
which one ran). Calibration: n sequences of `len` random token ids (seeded), so the token count is exact.
"""
import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine  # noqa: E402

SMOLLM2_SHAPE = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                     num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=2048,
                     rms_norm_eps=1e-5)
TINY_SHAPE = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,  # the xs preset
                  num_key_value_heads=4, vocab_size=2048, tie_word_embeddings=False, max_position_embeddings=512)


def _random_llama(shape: dict):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**shape)).eval()


def load(which: str):
    if which == "tiny":
        return _random_llama(TINY_SHAPE), "random Llama, the tiny xs preset's shape"
    from amnesiac.models.fetch import cached

    d = cached("smollm2")
    if d is not None:
        from amnesiac.models import load_model

        return load_model(d, device="cpu")[0].eval(), f"SmolLM2-135M-Instruct from {d}"
    return _random_llama(SMOLLM2_SHAPE), "random Llama of SmolLM2-135M's shapes (SmolLM2 not in the cache)"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="tiny,smollm2")
    ap.add_argument("--methods", default="gptq4_g128,gptq4_g128_actorder,awq4_g128")
    ap.add_argument("--n", type=int, default=16, help="calibration sequences")
    ap.add_argument("--len", type=int, default=256, help="tokens per sequence")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "gptq_awq_speed-cpu.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from amnesiac.attacks.quant.awq import awq_model
    from amnesiac.attacks.quant.gptq import gptq_model
    from amnesiac.attacks.quant.spec import quantizer_config

    res = []
    for which in a.models.split(","):
        model, what = load(which)
        n_block = sum(p.numel() for n, p in model.named_parameters() if ".layers." in n and p.dim() == 2)
        g = torch.Generator().manual_seed(0)
        batches = [torch.randint(0, model.config.vocab_size, (1, a.len), generator=g) for _ in range(a.n)]
        with torch.no_grad():  # one full-precision forward over the calibration set, for scale
            t = time.perf_counter()
            for b in batches:
                model(input_ids=b, use_cache=False)
            fwd = time.perf_counter() - t
        for name in a.methods.split(","):
            cfg = quantizer_config(name)
            t = time.perf_counter()
            if cfg["backend"] == "gptq":
                _, _, info = gptq_model(model, batches, bits=cfg["bits"], group=cfg["group"], sym=cfg["scheme"] == "sym",
                                        act_order=cfg["act_order"])
            else:
                _, _, info = awq_model(model, batches, bits=cfg["bits"], group=cfg["group"], scheme=cfg["scheme"],
                                       clip=cfg["clip"])
            dt = time.perf_counter() - t
            res.append({"model": which, "what": what, "method": name, "seconds": round(dt, 2),
                        "s_per_billion_block_params": round(dt / n_block * 1e9, 1), "block_params": n_block,
                        "calib_sequences": a.n, "calib_tokens": a.n * a.len, "fp_forward_s": round(fwd, 2),
                        "n_tensors": info["n_tensors"]})
            print(res[-1], flush=True)
    rec = {"benchmark": "gptq_awq_speed", "results": res, "machine": machine(),
           "note": "seconds include the model copy, block-input capture and the algorithm; calibration is "
                   "n × len random tokens (the defaults of deploy() are 128 × ≤512)",
           "when": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rec, indent=2) + "\n")
    print("wrote", a.out)


if __name__ == "__main__":
    main()
