"""One GPU, ≤ 8 minutes, one JSON: what amnesiac does on CUDA (driver of benchmarks/gpu_check.sh).

Phases (each under its own time cap; the JSON is rewritten after every phase, so a killed run keeps what it has):
  env      torch / CUDA / GPU description;
  tests    tests/test_cuda.py (CUDA against CPU: log-probs, greedy generation, an unlearning run, RTN), then the
           non-slow suite with device "auto" (which resolves to CUDA wherever a test does not pin the CPU), capped;
  unlearn  per method, one optimizer step's time (steady state: the 3rd step) and peak CUDA memory
           (torch.cuda.max_memory_allocated) on a randomly initialised 1B-class Llama in bfloat16
           (hidden 2048, 20 layers, GQA 32/4, intermediate 5632, vocab 32000: 1.01 B parameters), batch 4 + 4;
  audit    `amnesiac audit --suite full` wall time on a small random Llama (SmolLM2-135M's layer shapes, the bios
           tokenizer's vocabulary: ~0.1 B parameters) against a perturbed copy of itself;
  quant    RTN quantize→dequantize seconds per billion parameters (4 × 4096², as benchmarks/quant_speed.py).

usage: benchmarks/gpu_check.sh [--out FILE] [--skip tests,audit] [--budget-s 480]
       benchmarks/gpu_check.sh --dry-run              # the plan and the checks, nothing heavy (runs anywhere)
       benchmarks/gpu_check.sh --device cpu --tiny    # every phase at toy sizes on the CPU (checks the script)
Random weights: timings and memory are real, model quality is not the point.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

PHASES = ("env", "tests", "unlearn", "audit", "quant")
LLAMA_1B = dict(hidden_size=2048, num_hidden_layers=20, intermediate_size=5632, num_attention_heads=32,
                num_key_value_heads=4, vocab_size=32000)
SMOLLM2_135M_SHAPE = dict(hidden_size=576, num_hidden_layers=30, intermediate_size=1536, num_attention_heads=9,
                          num_key_value_heads=3)
TINY = dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)
METHODS = {  # name → unlearn options (on top of bf16, batch 4 + 4, lr 1e-5)
    "GA": dict(method="ga"), "GA_GDR": dict(method="ga_gdr"), "GA_KLR": dict(method="ga_klr"),
    "NPO": dict(method="npo"), "NPO_KLR": dict(method="npo_klr"), "SimNPO_GDR": dict(method="simnpo_gdr"),
    "IdkDPO_GDR": dict(method="idkdpo_gdr"), "RMU": dict(method="rmu"),
    "NPO_KLR_SURE": dict(method="npo_klr_sure", sure_percentile=90),
    "NPO_KLR+lora8": dict(method="npo_klr", lora_rank=8),
    "NPO_KLR+grad_ckpt": dict(method="npo_klr", gradient_checkpointing=True),
}
CAPS_S = {"tests_cuda": 90, "tests_suite": 150, "unlearn": 120, "audit": 150, "quant": 30}  # sum 540 − slack


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu only with --tiny (a script check)")
    ap.add_argument("--tiny", action="store_true", help="toy sizes everywhere (seconds on a CPU)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan, check imports and arguments, run nothing")
    ap.add_argument("--skip", default="", help=f"comma list of phases to skip ({', '.join(PHASES[1:])})")
    ap.add_argument("--budget-s", type=float, default=480, help="stop starting new work after this long")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/gpu_check-<gpu>.json)")
    a = ap.parse_args(argv)
    skip = {s for s in a.skip.split(",") if s}
    bad = skip - set(PHASES[1:])
    if bad:
        ap.error(f"--skip: unknown phase(s) {', '.join(sorted(bad))}; available: {', '.join(PHASES[1:])}")
    if a.device == "cpu" and not (a.tiny or a.dry_run):
        ap.error("--device cpu is a check of the script: add --tiny (a 1B bf16 step per method takes hours on a CPU)")
    a.skip = skip
    return a


def slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-")


class Run:
    """The JSON being built; written after every phase."""

    def __init__(self, a, out: Path):
        self.a, self.out, self.t0 = a, out, time.perf_counter()
        self.res = {"benchmark": "gpu_check", "args": {k: (sorted(v) if isinstance(v, set) else v)
                                                       for k, v in vars(a).items()},
                    "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "phases": {}}

    def left(self) -> float:
        return self.a.budget_s - (time.perf_counter() - self.t0)

    def save(self) -> None:
        from amnesiac.io import write_json

        self.res["wall_s"] = round(time.perf_counter() - self.t0, 1)
        write_json(self.out, self.res)

    def phase(self, name: str, fn) -> None:
        if name in self.a.skip:
            self.res["phases"][name] = {"skipped": "--skip"}
        elif self.left() < 20:
            self.res["phases"][name] = {"skipped": f"budget of {self.a.budget_s:.0f} s spent"}
        else:
            t = time.perf_counter()
            try:
                r = fn()
            except Exception as e:  # noqa: BLE001 - one failing phase must not lose the others' numbers
                r = {"error": f"{type(e).__name__}: {e}"}
            r["phase_wall_s"] = round(time.perf_counter() - t, 1)
            self.res["phases"][name] = r
        print(f"[gpu_check] {name}: {json.dumps(self.res['phases'][name])[:400]}", flush=True)
        self.save()


# ----- phases -----

def env_phase(dev: str) -> dict:
    import torch

    from amnesiac.io import versions

    d = {"torch": torch.__version__, "cuda_build": torch.version.cuda, "device": dev, "versions": versions(),
         "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg())}
    if dev == "cuda":
        p = torch.cuda.get_device_properties(0)
        d.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2 ** 30, 1), capability=f"{p.major}.{p.minor}",
                 bf16_supported=torch.cuda.is_bf16_supported(), gpu_count=torch.cuda.device_count())
    return d


def _pytest(args: list[str], cap: float) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    t = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", *args], cwd=REPO,
                           env=env, capture_output=True, text=True, timeout=cap)
    except subprocess.TimeoutExpired as e:
        tail = (e.stdout or b"")[-1500:]
        return {"timed_out_after_s": cap, "tail": tail.decode() if isinstance(tail, bytes) else tail}
    lines = [x for x in r.stdout.strip().splitlines() if x.strip()]
    summary = lines[-1] if lines else ""
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", summary)}
    return {"returncode": r.returncode, "summary": summary, "counts": counts, "wall_s": round(time.perf_counter() - t, 1),
            "failures": [x for x in lines if x.startswith(("FAILED", "ERROR"))][:20]}


def tests_phase(a, run: Run) -> dict:
    out = {"cuda_smoke": _pytest(["tests/test_cuda.py"], min(CAPS_S["tests_cuda"], run.left()))}
    if a.tiny:
        out["suite"] = {"skipped": "--tiny (the suite is `make test`)"}
    else:  # device "auto" resolves to CUDA in every test that does not pin the CPU
        out["suite"] = _pytest(["-m", "not slow", "tests"], min(CAPS_S["tests_suite"], max(30, run.left() - 300)))
    return out


def _data(n_forget: int, n_retain: int):
    import random

    from amnesiac.data import bios
    from amnesiac.models.tokenizer import train_tokenizer

    b = bios.generate(n_people=20, n_pretrain_people=0, seed=0)
    rng = random.Random(0)
    items = [it for p in b["people"] for it in bios.qa_items(p, rng)]
    tok = train_tokenizer([f"Question: {i.question}\nAnswer: {i.answer}" for i in items] + bios.filler_sentences(rng, 100),
                          vocab_size=800)
    return tok, items[:n_forget], items[n_forget: n_forget + n_retain]


def _llama(arch: dict, tok, dtype, device: str = "cpu"):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    c = {**arch}
    c.setdefault("vocab_size", len(tok))
    cfg = LlamaConfig(**c, max_position_embeddings=512, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build directly in bf16: no fp32 copy of 1 B parameters
    try:
        with torch.device(device):  # initialise where it will run (1 B normal_ draws are slow on a CPU)
            return LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(prev)


def unlearn_phase(a, dev: str, run: Run) -> dict:
    import torch

    from amnesiac.unlearn import unlearn

    tok, forget, retain = _data(8, 8)
    arch = TINY if a.tiny else LLAMA_1B
    model = _llama(arch, tok, torch.bfloat16, dev)
    init = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    n = sum(p.numel() for p in model.parameters())
    rows, stop_at = {}, time.perf_counter() + min(CAPS_S["unlearn"], run.left() - 20)
    for name, opts in METHODS.items():
        if time.perf_counter() > stop_at:
            rows[name] = {"skipped": "phase time cap"}
            continue
        with torch.no_grad():  # every method starts from the same weights
            model.load_state_dict(init)
        gc.collect()
        if dev == "cuda":
            torch.cuda.empty_cache()
        steps: list[float] = []
        try:
            r = unlearn(model, forget, retain, tokenizer=tok, precision="bfloat16", device=dev, lr=1e-5, max_steps=3,
                        batch_size=4, progress=False, callbacks=[lambda rec: steps.append(rec["t"])], **opts)
        except Exception as e:  # noqa: BLE001
            rows[name] = {"error": f"{type(e).__name__}: {e}"[:300]}
            continue
        i = r.info
        model = r.model  # the same module, or after LoRA the merged base model
        rows[name] = {"step_s": round(steps[2] - steps[1], 4), "first_step_s": round(steps[0], 3),
                      "wall_s": round(i["wall_s"], 2), "trainable_params": i["trainable_params"],
                      "peak_cuda_gib": round(i["memory"]["cuda_max_allocated_bytes"] / 2 ** 30, 2)
                      if "cuda_max_allocated_bytes" in i["memory"] else None,
                      "peak_rss_gib": round(i["memory"]["peak_rss_bytes"] / 2 ** 30, 2)}
        del r
        print(f"[gpu_check]   {name}: {rows[name]}", flush=True)
    return {"model": {**arch, "params": n, "dtype": "bfloat16"}, "batch": "4 forget + 4 retain bios QA (~25 tokens)",
            "step": "3rd optimizer step (t[3] − t[2] of the log), after warm-up", "methods": rows}


def audit_phase(a, dev: str, run: Run) -> dict:
    import torch

    from amnesiac.models import save_model

    tok, _, _ = _data(1, 1)
    arch = TINY if a.tiny else SMOLLM2_135M_SHAPE
    with tempfile.TemporaryDirectory() as d:
        m = _llama(arch, tok, torch.float32)
        n = sum(p.numel() for p in m.parameters())
        save_model(m, tok, Path(d) / "target")
        with torch.no_grad():  # "unlearned": the same weights, moved by a small random step
            g = torch.Generator().manual_seed(1)
            for p in m.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 1e-3)
        save_model(m, tok, Path(d) / "unlearned")
        del m
        suite = "quick" if a.tiny else "full"
        cmd = [sys.executable, "-m", "amnesiac.cli", "audit", "--target", f"{d}/target", "--unlearned", f"{d}/unlearned",
               "--forget", "bios:forget10", "--retain", "bios:retain90", "--suite", suite, "--out", f"{d}/audit"]
        if a.tiny:
            cmd += ["--max-retain", "20"]
        env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0")
               if dev == "cuda" else ""}
        t = time.perf_counter()
        cap = min(CAPS_S["audit"], run.left() - 10)
        try:
            r = subprocess.run(cmd, cwd=d, env=env, capture_output=True, text=True, timeout=cap)
        except subprocess.TimeoutExpired:
            return {"timed_out_after_s": cap, "params": n, "suite": suite}
        wall = time.perf_counter() - t
        s = Path(d) / "audit" / "summary.json"
        summary = json.loads(s.read_text()) if s.exists() else {}
    return {"model": {**arch, "params": n, "dtype": "float32"}, "suite": suite, "returncode": r.returncode,
            "wall_s": round(wall, 1), "audit_wall_s": summary.get("wall_s"), "attacks": summary.get("attacks"),
            "skipped_attacks": summary.get("skipped_attacks"),
            "per_attack_s": {k: v["wall_s"] for k, v in (summary.get("costs") or {}).items()},
            "stderr_tail": r.stderr[-800:] if r.returncode else None}


def quant_phase(a, dev: str) -> dict:
    import torch

    from amnesiac.attacks.quant.backends import get_quantizer

    n, dim = (2, 256) if a.tiny else (4, 4096)
    g = torch.Generator().manual_seed(0)
    ws = [(torch.randn(dim, dim, generator=g) * 0.02).to(dev) for _ in range(n)]
    params = n * dim * dim
    out = {}
    for label, kw in (("rtn8_channel", dict(bits=8, group=None, scheme="sym")),
                      ("rtn4_g64", dict(bits=4, group=64, scheme="sym")),
                      ("rtn4_g128_asym", dict(bits=4, group=128, scheme="asym"))):
        q = get_quantizer("rtn", **kw)
        q(ws[0][:64])  # warm-up (kernels)
        if dev == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for w in ws:
            q(w)
        if dev == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        out[label] = {"s_per_billion_params": round(dt / params * 1e9, 3), "seconds": round(dt, 4)}
    return {"params": params, "quantizers": out, "gptq": "not measured by this script (GPTQ backends are not amnesiac dependencies)"}


def main(argv=None) -> int:
    a = parse(argv)
    import torch

    cuda = torch.cuda.is_available()
    if a.device == "cuda" and not cuda and not a.dry_run:
        print(f"gpu_check: no CUDA device (torch {torch.__version__}, CUDA build {torch.version.cuda}): run it on a "
              "GPU machine with a CUDA build of torch; --dry-run or --device cpu --tiny check the script here",
              file=sys.stderr)
        return 2
    dev = a.device
    name = slug(torch.cuda.get_device_name(0)) if dev == "cuda" and cuda else "cpu" + ("-tiny" if a.tiny else "")
    out = Path(a.out) if a.out else HERE / "results" / f"gpu_check-{name}.json"
    plan = [p for p in PHASES if p not in a.skip]
    if a.dry_run:
        import amnesiac.attacks.quant.backends  # noqa: F401  (the imports every phase needs)
        import amnesiac.unlearn  # noqa: F401

        print(json.dumps({"plan": plan, "device": dev, "cuda_available": cuda, "tiny": a.tiny, "out": str(out),
                          "caps_s": CAPS_S, "budget_s": a.budget_s, "methods": list(METHODS),
                          "unlearn_model": TINY if a.tiny else LLAMA_1B,
                          "audit_model": TINY if a.tiny else SMOLLM2_135M_SHAPE}, indent=1))
        return 0
    run = Run(a, out)
    run.phase("env", lambda: env_phase(dev))
    run.phase("tests", lambda: tests_phase(a, run))
    run.phase("unlearn", lambda: unlearn_phase(a, dev, run))
    run.phase("audit", lambda: audit_phase(a, dev, run))
    run.phase("quant", lambda: quant_phase(a, dev))
    print(f"[gpu_check] wrote {out} ({run.res['wall_s']} s)")
    return 1 if any("error" in p for p in run.res["phases"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
