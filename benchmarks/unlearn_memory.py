"""Peak memory of one unlearning step per method and memory saver, on a randomly initialised 1B-class Llama.

usage: python benchmarks/unlearn_memory.py [--layers 20 --hidden 2048 ...] [--only GA,NPO_KLR+lora] [--max-gib 12]
       [--device auto] [--threads 1] [--out benchmarks/results/unlearn_memory-cpu.json]

Each configuration runs in a fresh subprocess (one optimizer step: the reference pass, forward, backward, AdamW
step, then amnesiac's end-of-run |Δw| report), so its peak is its own:
- CUDA: torch.cuda.max_memory_allocated (tensors only, reset after loading the weights);
- CPU: the subprocess's peak resident set (ru_maxrss): tensors + Python/torch runtime (shown separately as the
  RSS right after imports) + the safetensors pages touched while loading.
A configuration whose estimated footprint (weights + grads + optimizer states + reference copy + runtime) exceeds
--max-gib, or more than the memory available now, is skipped with that note. Data: 1 forget + 1 retain QA item
(bios, ~25 tokens each), batch 1 (a 1B step in bfloat16 takes minutes on a CPU without bf16 units), so activations
are small: these numbers are the parameter-state floor, and gradient checkpointing (which saves activations)
shows its effect only at longer sequences / larger batches.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine  # noqa: E402

GiB = 2 ** 30
BASE = dict(precision="bfloat16", reference="auto", optimizer="adamw", gradient_checkpointing=False, lora_rank=None)
CONFIGS = {  # name → (method, overrides of BASE); most informative first (see --time-limit-s)
    "NPO_KLR": ("npo_klr", {}), "NPO_KLR+lora8": ("npo_klr", {"lora_rank": 8}),
    "NPO_KLR+adamw8bit": ("npo_klr", {"optimizer": "adamw8bit"}),
    "NPO_KLR+ref_copy": ("npo_klr", {"reference": "copy"}), "RMU": ("rmu", {}), "GA": ("ga", {}),
    "NPO_KLR+grad_ckpt": ("npo_klr", {"gradient_checkpointing": True}),
    "GA_GDR": ("ga_gdr", {}), "GA_KLR": ("ga_klr", {}), "NPO": ("npo", {}), "SimNPO": ("simnpo", {}),
    "IdkDPO": ("idkdpo", {}),
    "NPO_KLR fp32": ("npo_klr", {"precision": "float32"}),
    "NPO_KLR bf16-mixed": ("npo_klr", {"precision": "bf16-mixed"}),
}
RUNTIME_GIB = 0.5  # Python + torch + transformers + tokenizer (measured on CPU: 0.22 GiB after imports, 0.44 peak)


def arch(a) -> dict:
    return dict(hidden_size=a.hidden, num_hidden_layers=a.layers, intermediate_size=a.inter,
                num_attention_heads=a.heads, num_key_value_heads=a.kv_heads, vocab_size=a.vocab)


def param_counts(c: dict) -> dict:
    h, L, inter, V = c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"], c["vocab_size"]
    kv = h // c["num_attention_heads"] * c["num_key_value_heads"]
    attn, mlp = 2 * h * h + 2 * h * kv, 3 * h * inter
    return {"total": L * (attn + mlp + 2 * h) + 2 * V * h + h, "per_layer_mlp": mlp,
            "lora8": L * 8 * (2 * (h + h) + 2 * (h + kv) + 2 * (h + inter) + (inter + h)), "hidden": h, "layers": L}


def estimate_gib(c: dict, method: str, o: dict) -> float:
    n = param_counts(c)
    wb = 2 if o["precision"] == "bfloat16" else 4  # bf16-mixed keeps fp32 weights
    trained = n["lora8"] if o["lora_rank"] else (3 * n["per_layer_mlp"] if method == "rmu" else n["total"])
    opt = 2 * trained * (1 if o["optimizer"] == "adamw8bit" else wb)
    ref = n["total"] * wb if o["reference"] == "copy" else 0
    return (n["total"] * wb + trained * wb + opt + ref) / GiB + RUNTIME_GIB


def model_name(a) -> str:
    return f"llama-h{a.hidden}-l{a.layers}-i{a.inter}-kv{a.kv_heads}-v{a.vocab}"


def mem_available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024 / GiB
    return float("inf")


def rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / GiB
    return float("nan")


def data():
    import random

    from amnesiac.data import bios
    from amnesiac.models.tokenizer import train_tokenizer

    b = bios.generate(n_people=10, n_pretrain_people=0, seed=0)
    rng = random.Random(0)
    items = [it for p in b["people"] for it in bios.qa_items(p, rng)]
    tok = train_tokenizer([f"Question: {i.question}\nAnswer: {i.answer}" for i in items] + bios.filler_sentences(rng, 100),
                          vocab_size=800)
    return tok, items[:1], items[-1:]


def build(model_dir: Path, c: dict) -> None:
    """Random weights (seed 0) in bfloat16, saved as safetensors: every configuration loads the same file."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from amnesiac.models import save_model

    tok, _, _ = data()
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    cfg = LlamaConfig(**c, max_position_embeddings=512, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    save_model(LlamaForCausalLM(cfg), tok, model_dir)


def one(model_dir: Path, method: str, o: dict, device: str) -> dict:
    import torch

    from amnesiac.unlearn import unlearn

    rss0 = rss_gib()
    _, forget, retain = data()
    t = time.perf_counter()
    r = unlearn(str(model_dir), forget, retain, method=method, max_steps=1, batch_size=1, lr=1e-5, progress=False,
                device=device, **o)
    i = r.info
    out = {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB, "rss_after_imports_gib": rss0,
           "wall_s": time.perf_counter() - t, "train_wall_s": i["train_wall_s"], "trainable_params": i["trainable_params"],
           "reference_used": i["reference"]["mode"], "device": i["device"]}
    if torch.cuda.is_available() and i["device"].startswith("cuda"):
        out["cuda_max_allocated_gib"] = i["memory"]["cuda_max_allocated_bytes"] / GiB
    return out


def table(rows: list[dict]) -> str:
    """Markdown table of the results (as in benchmarks/README.md)."""
    out = ["| configuration | trained params | estimate (GiB) | peak (GiB) | train step (s) | note |",
           "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        peak = r.get("cuda_max_allocated_gib", r.get("peak_rss_gib"))
        peak = "–" if peak is None else f"{peak:.2f}"
        step = f"{r['train_wall_s']:.0f}" if "train_wall_s" in r else "–"
        trained = f"{r['trainable_params'] / 1e6:.1f} M" if "trainable_params" in r else "–"
        note = r.get("skipped") or (" ".join(r["error"]) if "error" in r else f"reference: {r.get('reference_used')}")
        out.append(f"| {r['config']} | {trained} | {r['estimate_gib']:.1f} | {peak} | {step} | {note} |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=20)
    ap.add_argument("--inter", type=int, default=5632)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--only", default=None, help="comma list of configuration names (default: all)")
    ap.add_argument("--max-gib", type=float, default=12.0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--time-limit-s", type=float, default=None, help="start no configuration after this many seconds")
    ap.add_argument("--lock", default=None, help="run each subprocess under `flock LOCK` (shared machines)")
    ap.add_argument("--model-dir", default=None, help="reuse/keep the random model here (default: a temp dir)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--_one", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    import torch

    torch.set_num_threads(a.threads)
    c = arch(a)
    if a._one:  # child: one configuration
        spec = json.loads(a._one)
        print("RESULT " + json.dumps(one(Path(a.model_dir) / model_name(a), spec["method"], spec["o"], a.device)),
              flush=True)
        return
    names = a.only.split(",") if a.only else list(CONFIGS)
    bad = [n for n in names if n not in CONFIGS]
    if bad:
        sys.exit(f"unknown configuration(s) {bad}; available: {', '.join(CONFIGS)}")
    n = param_counts(c)
    lock = ["flock", a.lock] if a.lock else []
    print(f"model: {c} = {n['total'] / 1e9:.3f} B parameters", flush=True)
    tmp = tempfile.TemporaryDirectory(prefix="unlearn_memory-") if a.model_dir is None else None
    model_dir = Path(a.model_dir or tmp.name) / model_name(a)
    if not (model_dir / "config.json").exists():
        t = time.perf_counter()
        subprocess.run([*lock, sys.executable, "-c", f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                        f"import unlearn_memory as u; from pathlib import Path; u.build(Path({str(model_dir)!r}), {c!r})"],
                       check=True)
        print(f"built {model_dir} in {time.perf_counter() - t:.0f} s", flush=True)
    rows, t_start = [], time.perf_counter()
    for name in names:
        method, over = CONFIGS[name]
        o = {**BASE, **over}
        est = estimate_gib(c, method, o)
        row = {"config": name, "method": method, **o, "estimate_gib": round(est, 2)}
        avail = mem_available_gib()
        if a.time_limit_s is not None and time.perf_counter() - t_start > a.time_limit_s:
            row["skipped"] = f"not run: --time-limit-s {a.time_limit_s:g} reached"
        elif est > a.max_gib or est > avail - 1.0:
            row["skipped"] = (f"estimated {est:.1f} GiB > limit {a.max_gib:g} GiB" if est > a.max_gib
                              else f"estimated {est:.1f} GiB but only {avail:.1f} GiB available now")
        else:
            r = subprocess.run([*lock, sys.executable, __file__, *sys.argv[1:], "--model-dir", str(model_dir.parent),
                                "--_one", json.dumps({"method": method, "o": o})], capture_output=True, text=True)
            res = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
            if r.returncode != 0 or not res:
                row["error"] = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
            else:
                row.update({k: (round(v, 3) if isinstance(v, float) else v) for k, v in json.loads(res[-1][7:]).items()})
        rows.append(row)
        print(json.dumps(row), flush=True)
    rec = {"benchmark": "unlearn_memory", "model": {**c, "params": n["total"], "init": "random, seed 0, bfloat16"},
           "data": "1 forget + 1 retain bios QA item (~25 tokens), batch 1, 1 optimizer step",
           "measure": "CUDA: max_memory_allocated; CPU: peak RSS of a fresh subprocess per configuration",
           "max_gib": a.max_gib, "results": rows, "machine": machine(),
           "when": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    dev = "cuda" if torch.cuda.is_available() and a.device != "cpu" else "cpu"
    out = Path(a.out or Path(__file__).parent / "results" / f"unlearn_memory-{dev}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    from amnesiac.io import write_json

    write_json(out, rec)
    print(table(rows))
    print("wrote", out)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
