"""Unlearning step time and peak memory per method on the tiny default (CPU), 20 steps each.

usage: python benchmarks/unlearn_step.py [--steps 20] [--threads 2]   (builds/reuses the xs tiny models)
"""
import argparse
import json
import resource
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine  # noqa: E402

METHODS = ["ga_gdr", "ga_klr", "npo_gdr", "npo_klr", "simnpo_gdr", "idkdpo_gdr", "rmu", "npo_klr_sure"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "unlearn_step-cpu.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from amnesiac.models import tiny
    from amnesiac.unlearn import unlearn

    paths = tiny.prepare("xs", 0)
    res = []
    for m in METHODS:
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            r = unlearn(str(paths["target"]), "bios:forget10", "bios:retain90", out=Path(d) / "u", method=m, lr=1e-4,
                        max_steps=a.steps, batch_size=8, progress=False, device="cpu")
            wall = time.perf_counter() - t
        info = r.info
        res.append({"method": m, "steps": info["steps"], "train_wall_s": round(info["train_wall_s"], 3),
                    "s_per_step": round(info["train_wall_s"] / max(info["steps"], 1), 4), "total_wall_s": round(wall, 2),
                    "peak_rss_mb_process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                    "reference": info.get("reference")})
        print(res[-1], flush=True)
    rec = {"benchmark": "unlearn_step", "model": "tiny xs (hidden 128, 4 layers, 1.6 M params)", "batch": "8 forget + 8 retain",
           "results": res, "machine": machine(), "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "note": "peak RSS is the process high-water mark so far (methods run in sequence), not per method"}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rec, indent=2) + "\n")
    print("wrote", a.out)


if __name__ == "__main__":
    main()
