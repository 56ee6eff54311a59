"""The lr × steps sweep of `amnesiac reproduce smollm2`: where does unlearning start to survive
re-quantization to the release format, and what does that cost? (docs/science.md §1, §1b)

One method, constant lr, checkpoints at a few step counts of one run per lr (the model is evaluated in
a training callback, so `steps` (2, 8) costs one 8-step run, not two). At each checkpoint: forget /
retain / utility recall at full precision and at Q4_1, and the collapse diagnostics vs the target
under Q4_1. "Survives" is read off two numbers: codes changing at all (collapse rate < 100 %) and
Q4_1 forget recall below the target's. Cached per lr (a killed sweep redoes at most one lr).
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np

from ..io import hash_obj, read_json, write_json

SWEEP_PRECISIONS = ("fp", "q4_1")


def _point(model, tok, target, sets, cfg, qcache) -> dict:
    from .smollm2_measure import collapse_vs, measure

    pt = {}
    for p in SWEEP_PRECISIONS:
        k = measure(model, tok, sets, p, cfg.eval_batch)
        pt[p] = {s: float(np.mean(k[f"{s}_correct"])) for s in ("forget", "retain", "utility") if f"{s}_correct" in k}
        pt[p]["forget_prob"] = float(np.mean(k["forget_prob"]))
    d = collapse_vs(target, model, qcache, per_layer=False)
    pt["collapse"] = {k: d[k] for k in ("collapse_rate", "drift_kept", "mean_abs_dw_over_step", "frac_dw_ge_half_step",
                                        "value_identical", "changed_fraction")}
    return pt


def run_sweep(target, tok, target_id: dict, data: dict, cfg, cache: Path, qcache: dict | None = None,
              log=print) -> dict:
    """Rows {lr, steps, precision, forget/retain/utility recall, collapse_rate, …} + the first survivors."""
    from ..unlearn import unlearn
    from .smollm2_measure import RELEASE, cached_measure

    train, sets = data["train"], data["eval"]
    steps = sorted(set(cfg.sweep_steps))
    rows = []
    src = Path(data["source"])
    base = {p: cached_measure(cache, src, lambda: target, tok, sets, p, cfg.eval_batch, log)
            for p in SWEEP_PRECISIONS}
    for p, k in base.items():
        rows.append({"lr": 0.0, "steps": 0, "precision": p, **{s: float(np.mean(k[f"{s}_correct"]))
                                                                 for s in ("forget", "retain", "utility")},
                     "forget_prob": float(np.mean(k["forget_prob"])), "collapse_rate": 1.0, "drift_kept": None,
                     "mean_abs_dw_over_step": 0.0})
    walls = {}
    for lr in cfg.sweep_lrs:
        opts = dict(method=cfg.sweep_method, lr=lr, max_steps=steps[-1], schedule="constant",
                    batch_size=cfg.batch_size, seed=cfg.seed, progress=False)
        key = hash_obj({"target": target_id, "opts": opts, "at": steps, "v": 2,
                        "forget": [it.question for it in train["forget"]], "retain": [it.question for it in train["retain"]],
                        "eval": {s: [it.question for it in v] for s, v in sets.items()}})
        cp = cache / "sweep" / f"{cfg.sweep_method}-lr{lr:g}-{key}.json"
        if not cp.exists():
            log(f"smollm2: sweep: {cfg.sweep_method} lr {lr:g}, {steps[-1]} steps (checkpoints {steps})")
            model = copy.deepcopy(target)
            points, t0 = {}, time.time()
            train_s = [0.0]

            def at_step(rec, model=model, points=points):
                if rec["step"] in steps:
                    train_s[0] = rec["t"]
                    points[str(rec["step"])] = _point(model, tok, target, sets, cfg, qcache)
                    model.train()

            res = unlearn(model, train["forget"], train["retain"], tokenizer=tok, callbacks=[at_step], **opts)
            write_json(cp, {"lr": lr, "opts": opts, "points": points, "train_s": train_s[0],
                            "wall_s": round(time.time() - t0, 1), "drift": res.info.get("drift")})
            del model, res
        c = read_json(cp)
        walls[f"{lr:g}"] = c["wall_s"]
        for s_str, pt in c["points"].items():
            for p in SWEEP_PRECISIONS:
                rows.append({"lr": lr, "steps": int(s_str), "precision": p, **pt[p],
                             **{k: pt["collapse"][k] for k in ("collapse_rate", "drift_kept", "mean_abs_dw_over_step",
                                                               "frac_dw_ge_half_step")}})
    return {"method": cfg.sweep_method, "lrs": list(cfg.sweep_lrs), "steps": steps, "precisions": list(SWEEP_PRECISIONS),
            "rows": rows, "wall_s": walls, "first": first_survivors(rows, RELEASE)}


def first_survivors(rows: list[dict], release: str = "q4_1", margin: float = 0.05) -> dict:
    """Smallest (lr, steps) — ordered by lr·steps, the size of the update — whose codes change at all
    (collapse rate < 1) and whose forget recall at the release format is ≥ margin below the target's."""
    t = next((r for r in rows if r["lr"] == 0 and r["precision"] == release), None)
    pts = sorted((r for r in rows if r["lr"] > 0 and r["precision"] == release), key=lambda r: (r["lr"] * r["steps"], r["lr"]))
    codes = next((r for r in pts if r["collapse_rate"] < 1.0), None)
    forget = next((r for r in pts if t is not None and r["forget"] <= t["forget"] - margin), None)

    def brief(r):
        return None if r is None else {k: r[k] for k in ("lr", "steps", "forget", "retain", "utility", "collapse_rate")}

    return {"codes_change": brief(codes), "forget_drops_at_release": brief(forget),
            "rule": f"ordered by lr×steps; codes_change: collapse rate < 100 %; forget_drops_at_release: "
                    f"{release} forget recall ≤ the target's − {margin}"}
