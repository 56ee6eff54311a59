"""Peak memory of the audit: `amnesiac audit` on SmolLM2-135M for two code trees, and bytes per parameter of
the audit's model-resident step on a random-weight 1B-class Llama in bfloat16, extrapolated to 7B.

usage: python benchmarks/audit_memory.py [--before /path/to/other/checkout] [--skip-audit] [--skip-1b]
       [--model ~/.cache/amnesiac/models/smollm2-135m-instruct] [--out benchmarks/results/audit_memory.json]

1. `amnesiac audit` (the CLI, a fresh process under `/usr/bin/time -v`: its "Maximum resident set size" is the
   peak) with the same command and data for each code tree: `--before` (PYTHONPATH of another checkout, e.g.
   the main branch) and this one. Target = unlearned = the model (memory does not depend on what the weights
   are); forget = 4, retain = 8 bios QA items; attacks: the quick suite + q4_0, gptq4_g128, awq4_g128;
   float32 on CPU; a fresh output folder (no cache).
2. The audit's per-model loop on a random 1B-class Llama saved in bfloat16 (benchmarks/unlearn_memory.py's
   builder): load, then per attack (rtn8, rtn4_g64) quantize + one forward pass of 2 × 32 tokens, for the
   two ways of building the attacked model: "copy" (deploy(): a deep copy per attack, as before) and
   "in_place" (deployed(): the model itself, restored from its safetensors). Each in its own subprocess;
   peak = ru_maxrss. bytes/parameter = (peak − RSS after imports) / parameters; the 7B figure is
   RSS after imports + bytes/parameter × 6.74e9 (Llama-2-7B). The audit holds one model at a time, so a
   7B trio (target, unlearned, retrained) peaks at one model's figure.
"""
import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
GiB = 2 ** 30
ATTACKS = "fp,rtn8,rtn4_g64,paraphrase,q4_0,gptq4_g128,awq4_g128"
N_7B = 6.74e9  # Llama-2-7B parameters


def write_data(d: Path) -> tuple[Path, Path]:
    import random

    from amnesiac.data import bios

    b = bios.generate(n_people=10, n_pretrain_people=0, seed=0)
    rng = random.Random(0)
    items = [it for p in b["people"] for it in bios.qa_items(p, rng)]
    f, r = d / "forget.jsonl", d / "retain.jsonl"
    f.write_text("".join(json.dumps(it.to_json()) + "\n" for it in items[:4]))
    r.write_text("".join(json.dumps(it.to_json()) + "\n" for it in items[-8:]))
    return f, r


def audit_run(tree: Path, model: str, forget: Path, retain: Path, out: Path) -> dict:
    cmd = ["/usr/bin/time", "-v", sys.executable, "-c", "from amnesiac.cli import main; main()", "audit",
           "--target", model, "--unlearned", model, "--forget", str(forget), "--retain", str(retain),
           "--out", str(out), "--attacks", ATTACKS, "--n-boot", "1000", "--max-retain", "8", "--device", "cpu",
           "--batch-size", "16"]
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"audit failed ({tree}):\n{p.stderr[-3000:]}")
    kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
    s = json.loads((out / "summary.json").read_text())
    commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    return {"tree": str(tree), "commit": commit, "peak_rss_gib": round(kb * 1024 / GiB, 3), "wall_s": round(wall, 1),
            "summary_peak_memory": s.get("peak_memory"), "verdict": s["verdict"]["verdict"],
            "attacks": s["attacks"]}


def resident_step(model_dir: Path, mode: str) -> dict:
    """Child: load in bf16, then per attack quantize + one forward, with `mode` = copy | in_place."""
    import torch

    from amnesiac.attacks.quant.deploy import deploy, deployed
    from amnesiac.attacks.restore import Originals
    from amnesiac.models import load_model

    def rss():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / GiB

    r0 = rss()
    t = time.perf_counter()
    model, tok = load_model(model_dir, device="cpu", dtype="bfloat16")
    n = sum(p.numel() for p in model.parameters())
    out = {"mode": mode, "params": n, "rss_after_imports_gib": r0, "rss_after_load_gib": rss()}
    x = torch.randint(0, model.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    orig = Originals(model, model_dir) if mode == "in_place" else None
    if orig is not None:
        out["spilled_tensors"] = orig.spilled
    for name in ("rtn8", "rtn4_g64"):
        with torch.no_grad():
            if mode == "copy":
                m, _ = deploy(model, tok, name)
                m(x)
                del m
            else:
                with deployed(model, tok, name, originals=orig) as (m, _):
                    m(x)
    out["wall_s"] = time.perf_counter() - t
    out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB
    out["bytes_per_param"] = (out["peak_rss_gib"] - r0) * GiB / n
    out["estimate_7b_gib"] = r0 + out["bytes_per_param"] * N_7B / GiB
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", default=None, help="another checkout to compare (its PYTHONPATH), e.g. main")
    ap.add_argument("--model", default=str(Path.home() / ".cache/amnesiac/models/smollm2-135m-instruct"))
    ap.add_argument("--skip-audit", action="store_true")
    ap.add_argument("--skip-1b", action="store_true")
    ap.add_argument("--model-dir", default=None, help="keep/reuse the random 1B model here (default: a temp dir)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/audit_memory.json"))
    ap.add_argument("--_one", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import unlearn_memory as U

    # the 1B-class shape of unlearn_memory.py: hidden 2048, 20 layers, GQA 32/4, intermediate 5632, vocab 32000
    ua = argparse.Namespace(hidden=2048, layers=20, inter=5632, heads=32, kv_heads=4, vocab=32000)
    c = U.arch(ua)
    if a._one:
        print("RESULT " + json.dumps(resident_step(Path(a.model_dir) / U.model_name(ua), a._one)), flush=True)
        return
    res = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(), "seed": 0}
    if not a.skip_audit:
        with tempfile.TemporaryDirectory(prefix="audit_memory-") as d:
            forget, retain = write_data(Path(d))
            res["audit"] = {"command": f"amnesiac audit --target M --unlearned M --forget 4 bios items --retain 8 "
                                       f"--attacks {ATTACKS} --n-boot 1000 --max-retain 8 --device cpu --batch-size 16",
                            "model": a.model, "runs": {}}
            for label, tree in ([("before", Path(a.before))] if a.before else []) + [("after", ROOT)]:
                res["audit"]["runs"][label] = audit_run(tree, a.model, forget, retain, Path(d) / label)
                print(label, res["audit"]["runs"][label], flush=True)
    if not a.skip_1b:
        tmp = tempfile.TemporaryDirectory(prefix="audit_memory-1b-") if a.model_dir is None else None
        base = Path(a.model_dir or tmp.name)
        model_dir = base / U.model_name(ua)
        if not (model_dir / "config.json").exists():
            U.build(model_dir, c)
        res["resident_1b"] = {"arch": c, "dtype": "bfloat16", "runs": {}}
        for mode in ("copy", "in_place"):
            p = subprocess.run([sys.executable, __file__, "--_one", mode, "--model-dir", str(base)],
                               capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
            line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
            if p.returncode != 0 or not line:
                raise SystemExit(f"1B step {mode} failed:\n{p.stderr[-3000:]}")
            res["resident_1b"]["runs"][mode] = json.loads(line[0][7:])
            print(mode, res["resident_1b"]["runs"][mode], flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(out.read_text()) if out.exists() else {}
    out.write_text(json.dumps({**old, **res}, indent=2) + "\n")  # a partial run (--skip-*) keeps the other part
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
