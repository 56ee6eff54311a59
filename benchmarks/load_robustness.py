"""Load robustness: a fixed slice of the demo's work, timed idle and beside a busy process, per thread setting.

Why: on a busy 2-core machine torch's default (one OpenMP thread per core) made a tiny-model demo ~40× slower;
amnesiac.core.threads now picks 1 thread for tiny models. This script checks that the choice holds up:
the same slice is timed in a fresh subprocess
  - idle, and beside a busy process pinned to one core (numpy matmuls in a loop, 1 BLAS thread),
  - with the default thread policy (no OMP_NUM_THREADS / AMNESIAC_THREADS in the environment) and with 2 forced
    threads (AMNESIAC_THREADS=2, what torch's default does on this machine),
and loaded/idle ratios are written to benchmarks/results/load_robustness-<device>.json. Goal: ≤ 1.5 with the policy.
Runs are paired (idle, then loaded at once) because a shared machine's own background load drifts: both the
paired ratios and best-loaded / best-idle are reported, with the load average before every run.

The slice (xs tiny Llama, 1.4 M parameters, as in the demo): tokenizer + model build, `--train-steps` steps of
base-model training (batch 32), one greedy QA evaluation (64 prompts, 32 new tokens, batch 32), one NPO_KLR
unlearning run (`--unlearn-steps` steps, batch 8 + 8 retain).

Run: python benchmarks/load_robustness.py [--train-steps 100] [--repeats 1] [--timeout-s 300]
A run that times out counts as the timeout: its ratio is then a lower bound (reported as {"at_least": x}).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
THREAD_VARS = ("OMP_NUM_THREADS", "AMNESIAC_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def work(train_steps: int, unlearn_steps: int) -> dict:
    """The slice itself (runs in the child). Returns per-phase seconds and the thread choice that was made."""
    import random

    import torch

    from amnesiac.core import generate_greedy, threads
    from amnesiac.core.logprobs import encode_pairs
    from amnesiac.data import bios, qa_answer, qa_prompt
    from amnesiac.models.tiny import SIZES, build_llama
    from amnesiac.models.tokenizer import train_tokenizer
    from amnesiac.models.train import train_lm
    from amnesiac.unlearn import unlearn

    t = {}
    t0 = time.perf_counter()
    g = bios.generate(n_people=60, n_pretrain_people=10, seed=0)
    rng = random.Random(0)
    items = [it for p in g["people"] for it in bios.qa_items(p, rng)]
    bios_txt = [bios.biography(p, rng) for p in g["people"]]
    tok = train_tokenizer(bios_txt + [qa_prompt(i.question) + qa_answer(i.answer) for i in items],
                          vocab_size=SIZES["xs"]["vocab"])
    torch.manual_seed(0)
    model = build_llama(SIZES["xs"], tok)  # applies the thread policy (threads.configure(model))
    t["setup_s"] = time.perf_counter() - t0

    ex = encode_pairs(tok, [qa_prompt(i.question) for i in items], [qa_answer(i.answer) + tok.eos_token for i in items])
    ex += encode_pairs(tok, [""] * len(bios_txt), [b + tok.eos_token for b in bios_txt])
    t0 = time.perf_counter()
    train_lm(model, ex, tok.pad_token_id, epochs=train_steps * 32 / len(ex), lr=3e-3, batch_size=32, seed=0,
             warmup=10)
    t["train_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()  # before unlearning: NPO soon makes the model answer with EOS at once
    generate_greedy(model, tok, [qa_prompt(i.question) for i in items[:64]], 32, batch_size=32)
    t["eval_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    unlearn(model, items[:16], items[16:80], tokenizer=tok, method="npo_klr", lr=1e-4, max_steps=unlearn_steps,
            batch_size=8, device="cpu", progress=False)
    t["unlearn_s"] = time.perf_counter() - t0

    t["total_s"] = sum(t.values())
    return {"times": {k: round(v, 3) for k, v in t.items()}, "threads": threads.record(),
            "torch_num_threads": torch.get_num_threads()}


def busy_loop(core: int) -> None:
    """The competing load (runs in its own process): 1-thread numpy matmuls pinned to one core, forever."""
    import numpy as np

    os.sched_setaffinity(0, {core})
    a = np.random.default_rng(0).standard_normal((256, 256))
    while True:
        a = np.tanh(a @ a)


def run_child(args, env_threads: str | None, timeout_s: float) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["TQDM_DISABLE"] = "1"  # progress bars are not part of the slice
    if env_threads is not None:
        env["AMNESIAC_THREADS"] = env["OMP_NUM_THREADS"] = env_threads
    cmd = [sys.executable, __file__, "--child", "--train-steps", str(args.train_steps),
           "--unlearn-steps", str(args.unlearn_steps)]
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"timed_out_after_s": timeout_s}
    if r.returncode != 0:
        raise RuntimeError(f"child failed ({r.returncode}): {r.stderr[-2000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["process_wall_s"] = round(time.perf_counter() - t0, 3)  # includes interpreter start and imports
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train-steps", type=int, default=100)
    ap.add_argument("--unlearn-steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=1, help="idle+loaded pairs per thread setting")
    ap.add_argument("--busy-core", type=int, default=0, help="CPU the competing busy process is pinned to")
    ap.add_argument("--timeout-s", type=float, default=300, help="give up on one run after this long")
    ap.add_argument("--out", default=str(HERE / "results" / "load_robustness-cpu.json"))
    ap.add_argument("--only", choices=["policy", "forced_2_threads"], default=None, help="one thread setting only")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(work(a.train_steps, a.unlearn_steps)))
        return

    import multiprocessing as mp

    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(HERE))
    from _machine import machine

    from amnesiac.io import write_json

    settings = {"policy": None, "forced_2_threads": "2"}
    settings = {k: v for k, v in settings.items() if a.only in (None, k)}
    # Paired runs (idle, then loaded right after): on a machine shared with other jobs the background load
    # drifts over minutes, so each loaded run is compared with the idle run just before it.
    cells: dict = {f"{n}/{mode}": [] for n in settings for mode in ("idle", "loaded")}
    pairs: dict = {n: [] for n in settings}
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = "1"  # the busy loop: one thread
    for name, thr in settings.items():
        for _ in range(a.repeats):
            pair = {}
            for load in ("idle", "loaded"):
                busy = None
                if load == "loaded":
                    busy = mp.get_context("spawn").Process(target=busy_loop, args=(a.busy_core,), daemon=True)
                    busy.start()
                    time.sleep(2)
                try:
                    la0 = os.getloadavg()
                    r = run_child(a, thr, a.timeout_s)
                    r["load_average_before"] = [round(x, 2) for x in la0]
                    r["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
                finally:
                    if busy is not None:
                        busy.terminate()
                        busy.join()
                cells[f"{name}/{load}"].append(r)
                pair[load] = r["times"]["total_s"] if "times" in r else None
                print(f"{load:6s} {name:17s} {json.dumps(r.get('times', r))} load {r['load_average_before']}", flush=True)
            if pair["idle"] is not None:
                lo = pair["loaded"]
                pairs[name].append(round(lo / pair["idle"], 3) if lo is not None
                                   else {"at_least": round(a.timeout_s / pair["idle"], 1)})

    def best(key):  # the fastest run of a cell; (timeout, True) if every run timed out
        ts = [r["times"]["total_s"] for r in cells[key] if "times" in r]
        return (min(ts), False) if ts else (a.timeout_s, True)

    ratios = {}
    for name in settings:
        (i, i_to), (lo, lo_to) = best(f"{name}/idle"), best(f"{name}/loaded")
        ratios[name] = {"best_loaded_over_best_idle": None if i_to else {"at_least": round(lo / i, 1)} if lo_to
                        else round(lo / i, 3), "paired": pairs[name]}
    res = {"benchmark": "load_robustness", "slice": {"model": "xs tiny Llama", "train_steps": a.train_steps,
           "unlearn": f"npo_klr, {a.unlearn_steps} steps, batch 8", "eval": "64 QA prompts, 32 new tokens"},
           "busy_process": f"1 numpy thread, 256×256 matmul+tanh loop, pinned to CPU {a.busy_core}",
           "idle_means": "no competing process started by this script; other jobs on the machine show in the load "
                         "averages recorded before and after every run",
           "cells": cells, "loaded_over_idle": ratios, "goal": "loaded/idle <= 1.5 with the policy",
           "machine": machine(), "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_json(Path(a.out), res)
    print(f"loaded/idle: {ratios}  → {a.out}")


if __name__ == "__main__":
    main()
