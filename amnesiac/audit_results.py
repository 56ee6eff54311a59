"""The audit's result tables (amnesiac/audit.py): every metric's mean and CI per model and attack, the paired
difference of every metric to the verdict's floor per row, the process's peak memory."""
from __future__ import annotations

import numpy as np


def peak_memory() -> dict:
    """Peak resident memory of this process (and of CUDA, when used), in MiB: what an audit of this size needs."""
    import resource

    import torch

    out = {"peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def present_metrics(res: dict) -> list[str]:
    from .measure import METRICS

    return [k for k in METRICS if f"forget_{k}" in res["unlearned"]["fp"]]


def metric_effects(rows: list[dict], res: dict, attacks: list[str], metrics: list[str], seed: int,
                    ref: str = "fp") -> None:
    """Every applicable metric on every attack row: U's mean and the paired difference to the same floor the
    verdict uses (R under the same attack, else U at its reference level `ref`), with its 95 % CI. In place."""
    from .metrics.stats import paired_test

    for row, a in zip(rows, attacks):
        u = res["unlearned"][a]
        sel = u.get("item_index")
        eff = {}
        for k in metrics:
            x = np.asarray(u[f"forget_{k}"], dtype=np.float64)
            if "retrained" in res:
                base, floor = np.asarray(res["retrained"][a][f"forget_{k}"], dtype=np.float64), "retrained"
            elif a != ref:
                base = np.asarray(res["unlearned"][ref][f"forget_{k}"], dtype=np.float64)
                base, floor = (base[np.asarray(sel)] if sel is not None else base), f"unlearned@{ref}"
            else:
                eff[k] = {"value": float(x.mean())}
                continue
            t = paired_test(x, base, 2000, seed)
            eff[k] = {"value": float(x.mean()), "vs": floor, "diff": t["diff"], "diff_ci": [t["low"], t["high"]]}
        row["all_metrics"] = eff


def metric_summaries(res: dict, metrics: list[str], seed: int) -> dict:
    """Mean and 95 % CI of every metric, per model, attack and set."""
    from .metrics.stats import bootstrap_ci

    out: dict = {}
    for m, d in res.items():
        for a, r in d.items():
            row = {}
            for side in ("forget", "retain"):
                for k in metrics:
                    v = r.get(f"{side}_{k}")
                    if v:
                        row[f"{side}_{k}"] = {"mean": float(np.mean(v)), "ci": list(bootstrap_ci(v, seed=seed))}
            out.setdefault(m, {})[a] = row
    return out
