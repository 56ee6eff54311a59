"""Where GPTQ on SmolLM2 stops being bit-exact against gptqmodel, and whether that is float rounding.

Not a test (needs the conformance venv of gptq_awq.py). For every Linear of the chosen decoder blocks, H from
the full-precision model's inputs on the calibration chunks (no pipeline, so every layer is independent), then:
  ref      gptqmodel's GPTQ (gptq_awq.ref_gptq), float32
  proj     the project's gptq_weight, float32
  proj_eps the project's, with H moved by one float32 ulp per entry (symmetric, seeded): what rounding alone does
  proj64   the project's in float64 (W and H cast): the codes exact arithmetic would pick, nearly
Per layer: codes differing for ref vs proj (and the first differing column), proj vs proj_eps, and both float32
algorithms vs proj64. If ref/proj disagree in about as many layers as proj/proj_eps, and each disagrees with
proj64 about as often, the gap is near-tie rounding amplified by error feedback, not a difference in the algorithm.

usage: PYTHONPATH=. OMP_NUM_THREADS=1 /work/venvs/conf/bin/python benchmarks/conformance/gptq_layers.py \
           [--blocks 0,3,6,...] → benchmarks/results/gptq_layers_smollm2.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from gptq_awq import ROOT, load, ref_codes, ref_gptq  # noqa: E402

SETTINGS = dict(bits=4, group=128, sym=True, act_order=False, static_groups=False, damp=0.01, block=128)


def hessians(model, calib, names: list[str]) -> dict[str, torch.Tensor]:
    from amnesiac.attacks.quant.gptq import Hessian

    mods = dict(model.named_modules())
    acc = {n: Hessian(mods[n].in_features, "cpu") for n in names}
    hooks = [mods[n].register_forward_hook(lambda m, a, o, n=n: acc[n].add(a[0].detach())) for n in names]
    with torch.no_grad():
        for c in calib:
            model(input_ids=c[None], use_cache=False)
    for h in hooks:
        h.remove()
    return {n: acc[n].H for n in names}


def ulp_nudge(H: torch.Tensor, seed: int) -> torch.Tensor:
    """H + a symmetric ±1-ulp (float32) change of every entry."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(0, 2, H.shape, generator=g).to(H.dtype) * 2 - 1
    s = torch.triu(s) + torch.triu(s, 1).T
    up = torch.nextafter(H, torch.full_like(H, float("inf")))
    down = torch.nextafter(H, torch.full_like(H, float("-inf")))
    return torch.where(s > 0, up, down)


def main():
    from amnesiac.attacks.quant.gptq import gptq_weight

    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", default=",".join(str(i) for i in range(0, 30, 3)))
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--len", type=int, default=256)
    ap.add_argument("--smollm2", default=str(Path("~/.cache/amnesiac/models/smollm2-135m-instruct").expanduser()))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gptq_layers_smollm2.json"))
    a = ap.parse_args()
    torch.manual_seed(0)
    model, calib, _, what = load("smollm2", a.n, a.len, 1, a.smollm2)
    blocks = [int(b) for b in a.blocks.split(",")]
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith("model.layers.")
             and int(n.split(".")[2]) in blocks]
    t0 = time.perf_counter()
    Hs = hessians(model, calib, names)
    mods = dict(model.named_modules())
    rows = []
    for i, n in enumerate(names):
        W, H = mods[n].weight.detach().float(), Hs[n]
        st = SETTINGS
        q32, _ = gptq_weight(W, H, **st)
        c32 = q32.codes_flat().float()
        Q, scale, zero, g_idx, _ = ref_gptq(W, H, 10 ** 6, st["bits"], st["group"], st["sym"], st["act_order"],
                                            st["static_groups"], st["damp"], st["block"])
        cref = ref_codes(Q, scale, zero, g_idx).float()
        ceps = gptq_weight(W, ulp_nudge(H, i), **st)[0].codes_flat().float()
        c64 = gptq_weight(W.double(), H.double(), **st)[0].codes_flat().float()
        d = (cref != c32)
        cols = d.any(0).nonzero().flatten()
        rows.append({"layer": n, "codes": c32.numel(), "ref_vs_proj": int(d.sum()),
                     "first_col_ref_vs_proj": int(cols[0]) if len(cols) else None,
                     "proj_vs_proj_eps": int((c32 != ceps).sum()), "proj_vs_proj64": int((c32 != c64).sum()),
                     "ref_vs_proj64": int((cref != c64).sum())})
        print(json.dumps(rows[-1]), flush=True)
    n_l = len(rows)

    def share(k):
        return sum(r[k] > 0 for r in rows)

    out = {"benchmark": "gptq_layers", "what": what, "settings": SETTINGS, "calib": [a.n, a.len], "blocks": blocks,
           "hessian": "from the full-precision model's inputs (not the true-sequential pipeline)",
           "summary": {"layers": n_l, "layers_ref_vs_proj_differ": share("ref_vs_proj"),
                       "layers_proj_vs_proj_eps_differ": share("proj_vs_proj_eps"),
                       "layers_proj_vs_proj64_differ": share("proj_vs_proj64"),
                       "layers_ref_vs_proj64_differ": share("ref_vs_proj64")},
           "rows": rows, "wall_s": round(time.perf_counter() - t0, 1),
           "versions": {"torch": torch.__version__}, "when": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out["summary"]), "wrote", a.out)


if __name__ == "__main__":
    main()
