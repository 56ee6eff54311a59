"""Hypothesis H-bf16 (docs/science.md §1c): does pure-bfloat16 unlearning confine the update to the 4-bit grid's
zero bin, so that re-quantizing brings the knowledge back even for a normally trained target?

On the demo's tiny default (`trained` scenario: the fine-tuned target as is), unlearn at learning rates chosen
so that ρ = 256·lr/Δ spans ~0.1 … 4 (Δ: the release grid's step, median over the Linear weights of the target),
in float32, bfloat16 (pure: bf16 weights and AdamW states, no fp32 master) and bf16-mixed (fp32 master, bf16
autocast) at a few points; early stop as the demo (forget recall ≤ 25 % of the target's, checked every 4
steps, ≤ --max-steps). Each model is measured at full precision, 8-bit, the 4-bit release grid (rtn4_g64) and a
foreign 4-bit grid (rtn4_g128_asym), with bootstrap CIs over forget items, plus where the update went
(attacks/collapse.py) and the share of updates each step rounded away (unlearn.json).

Every unlearned model and every measurement is cached by content (amnesiac/runs.py): a rerun resumes.

usage: AMNESIAC_HOME=… OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bf16_threshold.py
           [--methods npo_klr,ga_gdr] [--rhos 0.5,1,2,0.25,4,0.1] [--mixed-rhos 0.5,1] [--max-steps 500]
       python benchmarks/bf16_threshold.py --plot-only   (figure + table from the JSON)
       python benchmarks/bf16_threshold.py --cached-only (re-assemble the JSON from the runs done so far)
"""
from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine  # noqa: E402

HERE = Path(__file__).parent
OUT = HERE / "results" / "bf16_threshold.json"
FIG = HERE.parent / "docs" / "results" / "bf16_threshold.png"
DEPLOY = {"fp": "fp", "8bit": "rtn8", "4bit": "rtn4_g64", "4bit_foreign": "rtn4_g128_asym"}
WHERE_KEYS = ("changed_fraction", "zero_bin_fraction", "changed_in_zero_bin", "update_l1_in_zero_bin",
              "collapse_rate", "drift_kept", "mean_abs_dw_over_step", "target_over_step_changed_hist")


def median_step(model, quantizer) -> float:
    """Median over every weight of every Linear layer of its group's step Δ under `quantizer`."""
    from amnesiac.attacks.quant.apply import select_weights

    steps = [quantizer.quantize(w.detach().float()).step_flat().flatten() for _, w in select_weights(model, True)]
    return float(torch.cat(steps).median())


def noisy_copy(model, seed: int):
    """Noise-fragility control: a copy whose Linear weights move by U(−½, ½)·Δ each (Δ: the weight's own release-grid
    step, rtn4_g64), the size of 4-bit rounding's error but in a random direction — not back toward any grid
    point. If knowledge returned under this too, recovery would be fragility to any perturbation, not snap-back."""
    import copy

    from amnesiac.attacks.quant.apply import select_weights
    from amnesiac.attacks.quant.spec import quantizer_from_name

    q = quantizer_from_name(DEPLOY["4bit"])
    m = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, w in select_weights(m, True):
            step = q.quantize(w.detach().float()).step_flat()
            u = torch.rand(w.shape, generator=g, dtype=torch.float32) - 0.5
            w.copy_((w.float() + u * step).to(w.dtype))
    return m


def where(target, model, precision: str) -> dict:
    """Where the update went, on the release and the foreign grid; a bf16 run also vs the plain float32 target."""
    from amnesiac.attacks.collapse import collapse_diagnostics
    from amnesiac.attacks.quant.spec import quantizer_from_name
    from amnesiac.runs import reference_dtype

    out = {}
    for label in ("4bit", "4bit_foreign"):
        q = quantizer_from_name(DEPLOY[label])
        d = collapse_diagnostics(target, model, q, target_dtype=reference_dtype(precision))["overall"]
        out[label] = {k: d.get(k) for k in WHERE_KEYS}
    if precision == "bfloat16":
        d = collapse_diagnostics(target, model, quantizer_from_name(DEPLOY["4bit"]))["overall"]
        out["4bit_vs_float32_target"] = {k: d.get(k) for k in ("changed_fraction", "changed_in_zero_bin",
                                                                "update_l1_in_zero_bin")}
    return out


def excess_recovery(bf: dict, fp32: dict, dep: str, n_boot: int, seed: int) -> dict:
    """Paired over forget items: (bf16 run's deployed − its fp recall) − (float32 run's deployed − its fp recall),
    the recovery bf16 adds over a float32 run stopped at the same full-precision recall."""
    from amnesiac.metrics.stats import paired_bootstrap_ci

    d_bf = np.asarray(bf[dep]["forget_items"]) - np.asarray(bf["fp"]["forget_items"])
    d_fp = np.asarray(fp32[dep]["forget_items"]) - np.asarray(fp32["fp"]["forget_items"])
    return paired_bootstrap_ci(d_fp, d_bf, n_resamples=n_boot, seed=seed)


def run(a) -> dict:
    from amnesiac.attacks.quant.spec import quantizer_from_name
    from amnesiac.data import load_qa_jsonl
    from amnesiac.data.sources import build_bios
    from amnesiac.io import amnesiac_home, content_key, hash_obj, read_json, versions, write_json
    from amnesiac.measure import scoring_for
    from amnesiac.metrics.stats import bootstrap_ci, paired_bootstrap_ci
    from amnesiac.models import load_model, tiny
    from amnesiac.runs import cached_measure, cached_unlearn

    t0 = time.time()
    paths = tiny.prepare("xs", a.seed)  # reuses the prepared models in AMNESIAC_HOME
    tcfg = tiny.default_config("xs", a.seed)
    data = build_bios(tcfg["bios"])
    forget = load_qa_jsonl(data / f"{tcfg['forget']}.jsonl")
    retain_all = load_qa_jsonl(data / f"retain{100 - int(tcfg['forget'][-2:])}.jsonl")
    rng = np.random.default_rng(a.seed)
    retain = [retain_all[i] for i in sorted(rng.choice(len(retain_all), min(a.max_retain, len(retain_all)),
                                                       replace=False))]
    scoring = scoring_for(forget)
    metric = scoring.metric
    target_dir = paths["target"]
    target, _ = load_model(target_dir, device="cpu")
    delta = median_step(target, quantizer_from_name(DEPLOY["4bit"]))
    root = amnesiac_home() / "bf16_threshold"
    sets = {"forget": forget, "retain": retain}

    def measure_all(mdir: Path) -> dict:
        held: list = []

        def loaded():
            if not held:
                held.append(load_model(mdir, device="cpu"))
            return held[0]

        ev = {k: cached_measure(mdir, v, sets, scoring, root / "cache", loaded=loaded) for k, v in DEPLOY.items()}
        if a.noise:
            from amnesiac.runs import items_key
            from amnesiac.measure import measure

            cp = root / "cache" / f"noise-{hash_obj([content_key(mdir), DEPLOY['4bit'], a.seed, scoring.to_json(), {k: items_key(v) for k, v in sets.items()}])}.json"
            if cp.exists():
                ev["noise"] = read_json(cp)
            else:
                m, tok = loaded()
                ev["noise"] = measure(noisy_copy(m, a.seed), tok, sets, scoring)
                write_json(cp, ev["noise"])
        return ev

    def recalls(ev: dict) -> dict:
        out = {}
        for k, r in ev.items():
            f = np.asarray(r["forget"][metric], dtype=float)
            lo, hi = bootstrap_ci(f, seed=a.seed, n_resamples=a.n_boot)
            out[k] = {"forget": float(f.mean()), "forget_ci": [lo, hi], "forget_items": f.tolist(),
                      "retain": float(np.mean(r["retain"][metric]))}
        fp = np.asarray(ev["fp"]["forget"][metric], dtype=float)
        for k in [d for d in ("8bit", "4bit", "4bit_foreign", "noise") if d in ev]:  # recovery: deployed − fp, same items
            out[k]["gain_vs_fp"] = paired_bootstrap_ci(fp, np.asarray(ev[k]["forget"][metric], dtype=float),
                                                       n_resamples=a.n_boot, seed=a.seed)
        return out

    target_row = {"recall": recalls(measure_all(target_dir))}
    rows: list[dict] = []
    summary: dict = {}

    def point(m: str, rho: float, prec: str, stop_at: float | None = None, long: bool = False) -> dict:
        """One unlearning run + its measurements. stop_at: an absolute early-stop recall (the matched control);
        long: the step cap is --long-steps instead of --max-steps (a separate run, cached under its own tag)."""
        nonlocal summary
        lr = float(f"{rho * delta / 256:.3g}")
        opts = dict(method=m, lr=lr, max_steps=a.long_steps if long else a.max_steps, schedule="constant",
                    batch_size=8, seed=a.seed, early_stop_recall=0.25, early_stop_relative=True, early_stop_every=4,
                    monitor_size=len(forget), track_rounding=True)
        if stop_at is not None:
            opts.update(early_stop_recall=stop_at, early_stop_relative=False)
        if prec != "float32":
            opts["precision"] = prec
        label = prec + (" (long)" if long else "") + (" (matched)" if stop_at is not None else "")
        tag = f"{m}-rho{rho:g}-{prec}" + ("-long" if long else "") + ("-matched" if stop_at is not None else "")
        if a.cached_only and not list((root / "models").glob(f"{target_dir.name}-{tag}-*/unlearn.json")):
            return None  # assemble what has been run, start nothing new
        s = time.time()
        udir = cached_unlearn(target_dir, forget, retain_all, opts, root / "models", tag=tag,
                              log=lambda msg: print(f"[bf16] {msg}", flush=True))
        info = read_json(udir / "unlearn.json")
        ev = measure_all(udir)
        cp = root / "cache" / f"where-{hash_obj([content_key(udir), content_key(target_dir), prec, 1])}.json"
        if cp.exists():
            wh = read_json(cp)
        else:
            wh = where(target, load_model(udir, device="cpu")[0], prec)
            write_json(cp, wh)
        rows.append({"method": m, "rho": rho, "lr": lr, "precision": label, "long": long, "steps": info["steps"],
                     "max_steps": opts["max_steps"],
                     "stopped_early": info["stopped_early"], "early_stop_at": opts["early_stop_recall"],
                     "early_stop_relative": opts["early_stop_relative"], "train_wall_s": round(info["train_wall_s"], 1),
                     "s_per_step": round(info["train_wall_s"] / max(info["steps"], 1), 3),
                     "rounded_away": info.get("rounded_away"), "recall": recalls(ev), "where": wh,
                     "point_wall_s": round(time.time() - s, 1), "model": str(udir)})
        r4 = rows[-1]["recall"]
        print(f"[bf16] {m} ρ={rho:g} lr={lr:.3g} {label}: {info['steps']} steps, forget fp {r4['fp']['forget']:.2f} "
              f"8b {r4['8bit']['forget']:.2f} 4b {r4['4bit']['forget']:.2f} 4b' {r4['4bit_foreign']['forget']:.2f}; "
              f"L1 in zero bin {wh['4bit']['update_l1_in_zero_bin']}", flush=True)
        summary = {"schema": "amnesiac.bf16_threshold/1", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   "seed": a.seed, "config": {k: v for k, v in vars(a).items() if k not in ("plot_only", "cached_only")},
                   "target": str(target_dir), "delta_median_4bit_g64": delta, "rho": "256·lr/Δ",
                   "deployments": DEPLOY, "metric": metric, "n_forget": len(forget), "n_retain_eval": len(retain),
                   "target_row": target_row, "rows": rows, "machine": machine(), "versions": versions(),
                   "wall_s": round(time.time() - t0, 1)}
        write_json(OUT, summary)
        return rows[-1]

    t_fp = target_row["recall"]["fp"]["forget"]
    for m in a.methods:  # in the order given: the most informative points first, so a cut-short run still answers
        capped = []
        for rho in a.rhos:
            point(m, rho, "float32")
            r = point(m, rho, "bfloat16")
            if r is not None and not r["stopped_early"] and r["recall"]["fp"]["forget"] < t_fp:
                capped.append((rho, r["recall"]["fp"]["forget"], False))
        for rho in a.mixed_rhos:
            point(m, rho, "bf16-mixed")
        # matched control: a bf16 run that never reached the early stop is compared with float32 at the same lr
        # stopped at the same full-precision forget recall (recovery depends on how far unlearning went)
        # long bf16 runs at small ρ: does a run that is let go on until it forgets keep its update in the zero
        # bin, and does re-quantizing then bring the knowledge back? (the paper trains for epochs at ρ ≈ 0.2)
        for rho in a.long_rhos:
            r = point(m, rho, "bfloat16", long=True)
            if r is not None and not r["stopped_early"] and r["recall"]["fp"]["forget"] < t_fp:
                capped.append((rho, r["recall"]["fp"]["forget"], True))
        for rho, f, long in capped:
            ctrl = point(m, rho, "float32", stop_at=round(f, 4))
            if ctrl is None:
                continue
            want = "bfloat16 (long)" if long else "bfloat16"
            bf = next(r for r in rows if r["method"] == m and r["rho"] == rho and r["precision"] == want)
            ctrl["matched_to"] = want
            ctrl["bf16_minus_float32_recovery"] = {
                dep: excess_recovery(bf["recall"], ctrl["recall"], dep, a.n_boot, a.seed) for dep in ("4bit", "4bit_foreign")}
            write_json(OUT, summary)
    return summary


def plot(summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = sorted({r["method"] for r in summary["rows"]})
    fig, axes = plt.subplots(2, len(methods), figsize=(6.5 * len(methods), 8), squeeze=False)
    style = {"float32": "-", "bfloat16": "--", "bf16-mixed": ":"}
    shift = {"float32": 1.0, "bfloat16": 1.04, "bf16-mixed": 0.96}  # keep error bars apart
    colour = {"fp": "black", "8bit": "tab:blue", "4bit": "tab:red", "4bit_foreign": "tab:orange"}
    for j, m in enumerate(methods):
        ax, ax2 = axes[0][j], axes[1][j]
        for prec in ("float32", "bfloat16", "bf16-mixed"):
            rows = sorted((r for r in summary["rows"] if r["method"] == m and r["precision"] == prec),
                          key=lambda r: r["rho"])
            if not rows:
                continue
            x = [r["rho"] * shift[prec] for r in rows]
            for dep in ("fp", "8bit", "4bit", "4bit_foreign"):
                y = [r["recall"][dep]["forget"] for r in rows]
                lo = [y_ - r["recall"][dep]["forget_ci"][0] for y_, r in zip(y, rows)]
                hi = [r["recall"][dep]["forget_ci"][1] - y_ for y_, r in zip(y, rows)]
                ax.errorbar(x, y, yerr=[lo, hi], ls=style[prec], color=colour[dep], marker="o", ms=3, capsize=2,
                            label=f"{prec}, {dep}")
            for dep in ("4bit", "4bit_foreign"):
                g = [r["recall"][dep]["gain_vs_fp"] for r in rows]
                ax2.errorbar(x, [d["diff"] for d in g], yerr=[[d["diff"] - d["low"] for d in g],
                                                              [d["high"] - d["diff"] for d in g]],
                             ls=style[prec], color=colour[dep], marker="o", ms=3, capsize=2, label=f"{prec}, {dep} − fp")
        for r in (r for r in summary["rows"] if r["method"] == m and r["precision"].endswith("(matched)")):
            for dep in ("fp", "4bit"):
                ax.plot([r["rho"]], [r["recall"][dep]["forget"]], marker="x", ms=8, ls="none", color=colour[dep],
                        label=f"float32 stopped at the bf16 run's recall, {dep}")
            d = r["recall"]["4bit"]["gain_vs_fp"]
            ax2.plot([r["rho"]], [d["diff"]], marker="x", ms=8, ls="none", color=colour["4bit"],
                     label="float32 stopped at the bf16 run's recall, 4bit − fp")
        for r in (r for r in summary["rows"] if r["method"] == m and r["precision"] == "bfloat16 (long)"):
            for dep in ("fp", "4bit", "4bit_foreign"):
                ax.plot([r["rho"] * 1.08], [r["recall"][dep]["forget"]], marker="s", ms=6, ls="none", mfc="none",
                        color=colour[dep], label=f"bfloat16, {r['max_steps']}-step cap, {dep}")
            d = r["recall"]["4bit"]["gain_vs_fp"]
            ax2.plot([r["rho"] * 1.08], [d["diff"]], marker="s", ms=6, ls="none", mfc="none", color=colour["4bit"],
                     label=f"bfloat16, {r['max_steps']}-step cap, 4bit − fp")
        t = summary["target_row"]["recall"]["fp"]["forget"]
        ax.axhline(t, color="grey", lw=0.8)
        ax2.axhline(0, color="grey", lw=0.8)
        for a_ in (ax, ax2):
            a_.axvline(0.5, color="grey", lw=0.5, ls=":")
            a_.set_xscale("log")
            a_.set_xlabel("ρ = 256·lr / Δ (Δ: median 4-bit g64 step of the target)")
            h, lab = a_.get_legend_handles_labels()
            uniq = dict(zip(lab, h))  # one entry per label (the matched / long markers repeat per ρ)
            a_.legend(uniq.values(), uniq.keys(), fontsize=6, ncol=2)
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("forget recall (95% bootstrap CI)")
        ax.set_title(f"{m.upper()} on the tiny target (grey: target {t:.2f})")
        ax2.set_ylabel("recovery: deployed − full-precision forget recall")
        ax2.set_title("recovery, paired bootstrap 95% CI")
    fig.tight_layout()
    FIG.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIG, dpi=110)
    plt.close(fig)


def table(summary: dict) -> str:
    lines = ["| method | ρ | lr | precision | steps | forget fp | 8-bit | 4-bit (release) | 4-bit (foreign) | "
             "4-bit − fp (CI) | noise − fp (CI) | retain fp | changed | L1 in zero bin | rounded away/step |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def pct(x, nd):
        return "-" if x is None else f"{100 * x:.{nd}f}%"

    def ci(d):
        return f"{d['forget']:.2f} [{d['forget_ci'][0]:.2f}, {d['forget_ci'][1]:.2f}]"

    def noise(rc):
        if "noise" not in rc:
            return "-"
        g = rc["noise"]["gain_vs_fp"]
        return f"{g['diff']:+.2f} [{g['low']:+.2f}, {g['high']:+.2f}]"

    for r in sorted(summary["rows"], key=lambda r: (r["method"], r["rho"], r["precision"])):
        rc, w = r["recall"], r["where"]["4bit"]
        g = rc["4bit"]["gain_vs_fp"]
        ra = (r.get("rounded_away") or {}).get("mean")
        lines.append(f"| {r['method']} | {r['rho']:g} | {r['lr']:.3g} | {r['precision']} | {r['steps']}"
                     f"{'' if r['stopped_early'] else ' (cap)'} | {ci(rc['fp'])} | {ci(rc['8bit'])} | {ci(rc['4bit'])} | "
                     f"{ci(rc['4bit_foreign'])} | {g['diff']:+.2f} [{g['low']:+.2f}, {g['high']:+.2f}] | {noise(rc)} | "
                     f"{rc['fp']['retain']:.2f} | "
                     f"{100 * w['changed_fraction']:.1f}% | "
                     f"{pct(w['update_l1_in_zero_bin'], 0)} | {pct(ra, 1)} |")
    ex = [r for r in summary["rows"] if "bf16_minus_float32_recovery" in r]
    if ex:
        lines += ["", "| method | ρ | bf16 run | bf16 recovery − matched float32 recovery, 4-bit release (CI) | "
                  "foreign 4-bit (CI) |", "|---|---|---|---|---|"]
        for r in ex:
            e = r["bf16_minus_float32_recovery"]
            lines.append(f"| {r['method']} | {r['rho']:g} | {r.get('matched_to', 'bfloat16')} | " + " | ".join(
                f"{e[d]['diff']:+.2f} [{e[d]['low']:+.2f}, {e[d]['high']:+.2f}]" for d in ("4bit", "4bit_foreign")) + " |")
    return "\n".join(lines)


def where_table(summary: dict) -> str:
    """Where the update went, on the release grid (bf16 runs vs the bf16-cast target): one row per bf16/float32
    run (matched and bf16-mixed runs left out: float32 spreads its update like the plain float32 rows)."""
    lines = ["| method | ρ | precision | weights changed | changed in zero bin | update L1 in zero bin | drift kept 4b | "
             "codes unchanged 4b | \\|w_t\\|/Δ of changed weights: <¼ / ¼–½ / ½–1 / 1–2 / ≥2 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(summary["rows"], key=lambda r: (r["method"], r["rho"], r["precision"])):
        if r["precision"] not in ("float32", "bfloat16", "bfloat16 (long)"):
            continue
        w = r["where"]["4bit"]
        h = w["target_over_step_changed_hist"]  # TARGET_EDGES: 0, ¼, ½, 1, 1.5, 2, 4, 8, ∞
        n = max(sum(h), 1)
        b = [h[0], h[1], h[2], h[3] + h[4], sum(h[5:])]
        lines.append(f"| {r['method']} | {r['rho']:g} | {r['precision']} | {100 * w['changed_fraction']:.1f}% | "
                     f"{100 * w['changed_in_zero_bin']:.0f}% | {100 * w['update_l1_in_zero_bin']:.0f}% | "
                     f"{w['drift_kept']:.2f} | {100 * w['collapse_rate']:.1f}% | "
                     + " / ".join(f"{100 * x / n:.0f}%" for x in b) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default="npo_klr")
    ap.add_argument("--rhos", default="0.5,1,2,0.25,4")  # run order (0.1: add when time allows)
    ap.add_argument("--mixed-rhos", default="0.5,1")
    ap.add_argument("--max-steps", type=int, default=500)
    ap.add_argument("--long-rhos", default="", help="bf16 points also run with --long-steps (e.g. 0.25,0.5)")
    ap.add_argument("--long-steps", type=int, default=2000)
    ap.add_argument("--max-retain", type=int, default=100)
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noise", action="store_true", help="also the noise-fragility control: U(−½, ½)·Δ(4-bit) per weight")
    ap.add_argument("--plot-only", action="store_true")
    ap.add_argument("--cached-only", action="store_true", help="only the points already unlearned (no new runs)")
    a = ap.parse_args()
    a.methods = [m for m in a.methods.split(",") if m]
    a.rhos = [float(x) for x in a.rhos.split(",") if x]
    a.mixed_rhos = [float(x) for x in a.mixed_rhos.split(",") if x]
    a.long_rhos = [float(x) for x in a.long_rhos.split(",") if x]
    if a.plot_only:
        from amnesiac.io import read_json

        summary = read_json(OUT)
    else:
        summary = run(a)
    plot(summary)
    print(table(summary))
    print()
    print(where_table(summary))


if __name__ == "__main__":
    main()
