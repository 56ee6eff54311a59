"""bitsandbytes as users load it vs the project's simulation, on SmolLM2-135M-Instruct (CPU).

usage: OMP_NUM_THREADS=1 python benchmarks/bnb_load.py [--model DIR] [--n-facts 200] [--kinds all]

For each setting (fp4, fp4_dq, nf4, nf4_dq, int8) four deployments of the same saved folder:
  a   transformers from_pretrained(quantization_config=BitsAndBytesConfig(...)), eval mode: what users run
  a32 the same loaded model in training mode: bitsandbytes' dequantize + float32 matmul path (dropout is 0)
  b   the project's native() swap (bnb Linear4bit / Linear8bitLt in place), eval mode
  c   the simulation: dequantized weights in a plain model (`bnb_fp4`, `bnb_nf4_dq`, …)
Measured: max |logit| difference on a fixed batch of fact prompts (16 prompts), the number of Linear
weights whose loaded codes dequantize to exactly the simulated weights, and fact recall (greedy completion
starts with an accepted answer, the `fact` scoring of reproduce smollm2) on the first n built-in facts.
SmolLM2 must be in the cache (`amnesiac models fetch smollm2`); this script never downloads.
"""
import argparse
import copy
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine  # noqa: E402

SETTINGS = ("fp4", "fp4_dq", "nf4", "nf4_dq", "int8")


def weights_equal(loaded, sim) -> tuple[int, int]:
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    same = n = 0
    for name, mod in loaded.named_modules():
        if isinstance(mod, bnb.nn.Linear4bit):
            w = F.dequantize_4bit(mod.weight.data, mod.weight.quant_state)
            same += int(torch.equal(w, sim.get_submodule(name).weight.detach()))
            n += 1
    return same, n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(Path("~/.cache/amnesiac/models/smollm2-135m-instruct").expanduser()))
    ap.add_argument("--n-facts", type=int, default=200)
    ap.add_argument("--kinds", default="all")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bnb_load.json"))
    a = ap.parse_args()
    torch.manual_seed(0)
    import bitsandbytes.functional as F

    from amnesiac.attacks.quant import deploy, get_quantizer
    from amnesiac.data.facts import known_facts, load_facts
    from amnesiac.data.schema import item_prompt
    from amnesiac.models import load_model

    model, tok = load_model(a.model, device="cpu")
    facts = load_facts(None)[: a.n_facts]
    batch = tok([item_prompt(it) for it in facts[:16]], return_tensors="pt", padding=True)

    def logits(m):
        with torch.no_grad():
            return m(**batch).logits

    def recall(m):
        t = time.perf_counter()
        ok = known_facts(m, tok, facts, batch_size=a.batch)[2]
        return ok, time.perf_counter() - t

    fp_ok, fp_s = recall(model)
    res = {"fp": {"recall": sum(fp_ok) / len(fp_ok), "recall_s": round(fp_s, 1)}}
    print("fp", res["fp"], flush=True)
    for s in (SETTINGS if a.kinds == "all" else a.kinds.split(",")):
        kind, dq = s.split("_")[0], s.endswith("_dq")
        t = time.perf_counter()
        loaded = deploy(model, tok, f"bnb_{s.replace('_dq', '')}_load" + ("_dq" if dq else ""))[0]
        load_s = time.perf_counter() - t
        sim = deploy(model, tok, f"bnb_{s}")[0]
        same, n = weights_equal(loaded, sim) if kind != "int8" else (None, None)
        la32 = logits(loaded.train())  # before any eval forward: bnb repacks for its CPU kernel on the first one
        loaded.eval()
        swap = get_quantizer("bnb", 8 if kind == "int8" else 4, 64, kind=kind, double_quant=dq).native(copy.deepcopy(model)).eval()
        L = {"a": logits(loaded), "a32": la32, "b": logits(swap), "c": logits(sim), "fp": logits(model)}
        diff = {f"{x}-{y}": float((L[x] - L[y]).abs().max()) for x, y in
                (("a", "b"), ("a", "c"), ("a32", "c"), ("b", "c"), ("a", "fp"), ("c", "fp"))}
        rec = {"a": recall(loaded), "b": recall(swap), "c": recall(sim)}
        ok = {k: v[0] for k, v in rec.items()}
        res[s] = {"max_abs_logit_diff": diff, "logit_scale": float(L["c"].abs().max()),
                  "weights_bit_exact": None if same is None else f"{same}/{n}",
                  "recall": {k: sum(v) / len(v) for k, v in ok.items()},
                  "items_disagreeing": {"a_vs_c": sum(x != y for x, y in zip(ok["a"], ok["c"])),
                                        "a_vs_b": sum(x != y for x, y in zip(ok["a"], ok["b"]))},
                  "recall_s": {k: round(v[1], 1) for k, v in rec.items()}, "load_s": round(load_s, 2)}
        print(s, res[s], flush=True)
        del loaded, swap, sim
        write(a, res, len(facts), F)  # after every setting: a stopped run keeps what it measured


def write(a, res, n_facts, F):
    out = {"benchmark": "bnb_load", "model": a.model, "n_facts": n_facts, "seed": 0,
           "cpu_avx512_bf16": bool(F.has_avx512bf16()), "results": res, "machine": machine(),
           "note": "a = transformers + BitsAndBytesConfig (eval), a32 = same model in train mode (float32 dequantize path), "
                   "b = native() swap (eval), c = simulated dequantized weights; recall = fact completion on the first "
                   "n_facts built-in facts; logits on 16 fact prompts",
           "when": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    print("wrote", a.out)


if __name__ == "__main__":
    main()
