"""Seconds per billion parameters to quantize→dequantize weights, RTN and each installed backend.

usage: python benchmarks/quant_speed.py [--n 4] [--dim 4096] [--threads 2]
Weights are random (n matrices of dim × dim, Llama-7B's attention size); the time is for one pass of
Q(w) over all of them, as the audit does once per bit width.
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

CASES = [("rtn", dict(bits=8, group=None, scheme="sym")), ("rtn", dict(bits=4, group=64, scheme="sym")),
         ("rtn", dict(bits=4, group=128, scheme="asym")), ("rtn", dict(bits=3, group=64, scheme="sym")),
         ("hqq", dict(bits=4, group=64)), ("quanto", dict(bits=4)), ("quanto", dict(bits=8)),
         ("bnb", dict(bits=4, kind="nf4")), ("gguf", dict(kind="q4_1")), ("gguf", dict(kind="q8_0"))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "quant_speed-cpu.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from amnesiac.attacks.quant.backends import available, get_quantizer

    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(a.dim, a.dim, generator=g) * 0.02 for _ in range(a.n)]
    n_params = sum(w.numel() for w in ws)
    res = []
    for backend, kw in CASES:
        if backend != "rtn" and not available(backend):
            res.append({"backend": backend, **kw, "skipped": "not installed"})
            continue
        q = get_quantizer(backend, **kw)
        q(ws[0][:64])  # warm-up (library init)
        t = time.perf_counter()
        err = 0.0
        for w in ws:
            err += float(((q(w) - w).norm() / w.norm()).item())
        dt = time.perf_counter() - t
        res.append({"backend": backend, **kw, "seconds": round(dt, 3), "s_per_billion_params": round(dt / n_params * 1e9, 2),
                    "rel_error": round(err / len(ws), 4)})
        print(res[-1], flush=True)
    rec = {"benchmark": "quant_speed", "n_params": n_params, "shape": [a.dim, a.dim], "results": res,
           "machine": machine(), "when": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rec, indent=2) + "\n")
    print("wrote", a.out)


if __name__ == "__main__":
    main()
