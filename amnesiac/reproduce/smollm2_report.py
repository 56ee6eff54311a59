"""Tables, figures and the report of `amnesiac reproduce smollm2` (terminal via rich, report.md/html)."""
from __future__ import annotations

from pathlib import Path

from ..report.render import Section, write_report

SHORT = {"fp": "fp", "q4_1": "Q4_1 (release)", "q4_1_file": "GGUF Q4_1+emb Q8_0", "q4_0": "Q4_0", "q8_0": "Q8_0", "rtn8": "RTN8 ch",
         "rtn4_g128_asym": "RTN4 g128 asym", "hqq4": "HQQ4 g64", "gptq4_g128": "GPTQ4 g128", "awq4_g128": "AWQ4 g128",
         "gptq8_g128": "GPTQ8 g128", "awq8_g128": "AWQ8 g128"}


def _f(x, nd=2) -> str:
    return "-" if x is None or x != x else f"{x:.{nd}f}"


def _pct(x) -> str:
    """Percent with 3 decimals, and never "100.000%" for a rate below 1 (the first changed codes matter)."""
    if x is None:
        return "-"
    t = f"{100 * x:.3f}%"
    return "<100.000%" if t == "100.000%" and x < 1 else t


def _by(summary: dict) -> tuple[list[str], list[str], dict]:
    rows = summary["rows"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    precs = list(dict.fromkeys(r["precision"] for r in rows))
    return methods, precs, {(r["method"], r["precision"]): r for r in rows}


def table_rows(summary: dict) -> list[list[str]]:
    """Header + one row per model: forget / retain / utility recall per precision, recipe, Q4_1 diagnostics."""
    methods, precs, by = _by(summary)
    rel = summary["release_format"]
    head = ["model", "lr × steps"] + [f"{SHORT.get(p, p)} F/R/U" for p in precs] + [
        "codes unchanged Q4_1", "drift kept Q4_1", "mean abs Δw/Δ Q4_1"]
    out = [head]
    for m in methods:
        r0 = by[(m, "fp")]
        recipe = "-" if r0["lr"] is None else f"{r0['lr']:g} × {r0['steps']}" + (" SURE" if r0["sure_percentile"] else "")
        line = [m, recipe] + [f"{_f(by[(m, p)]['forget_recall'])} / {_f(by[(m, p)]['retain_recall'])} / "
                              f"{_f(by[(m, p)]['utility_recall'])}" for p in precs]
        d = by[(m, rel)]
        line += [_pct(d["collapse_rate"]) if m != "target" else "-", _f(d["drift_kept"]),
                 _f(d["mean_abs_dw_over_step"], 4) if m != "target" else "-"]
        out.append(line)
    return out


def ci_rows(summary: dict) -> list[list[str]]:
    """Forget recall with its 95 % CI, and the excess over the same model at full precision (paired CI)."""
    methods, precs, by = _by(summary)
    out = [["model"] + [SHORT.get(p, p) for p in precs]]
    for m in methods:
        cells = []
        for p in precs:
            r = by[(m, p)]
            lo, hi = r["forget_recall_ci"]
            c = f"{r['forget_recall']:.2f} [{lo:.2f}, {hi:.2f}]"
            if p != "fp":
                elo, ehi = r["excess_over_fp_ci"]
                c += f" Δfp {r['excess_over_fp']:+.2f} [{elo:+.2f}, {ehi:+.2f}]"
            cells.append(c)
        out.append([m] + cells)
    return out


def _point(r: dict | None) -> str:
    if r is None:
        return "none in this grid"
    return (f"lr {r['lr']:g} × {r['steps']} steps (Q4_1 forget / retain / utility {r['forget']:.2f} / {r['retain']:.2f} / "
            f"{r['utility']:.2f}, codes unchanged {_pct(r['collapse_rate'])})")


def sweep_rows(sweep: dict) -> list[list[str]]:
    head = ["lr", "steps", "fp F/R/U", "Q4_1 F/R/U", "codes unchanged Q4_1", "drift kept", "mean abs Δw/Δ", "≥ ½ step"]
    by = {(r["lr"], r["steps"], r["precision"]): r for r in sweep["rows"]}
    out = [head]
    for lr, st in sorted({(r["lr"], r["steps"]) for r in sweep["rows"]}):
        fp, q = by[(lr, st, "fp")], by[(lr, st, "q4_1")]
        out.append(["target" if lr == 0 else f"{lr:g}", str(st),
                    f"{fp['forget']:.2f} / {fp['retain']:.2f} / {fp['utility']:.2f}",
                    f"{q['forget']:.2f} / {q['retain']:.2f} / {q['utility']:.2f}", _pct(q["collapse_rate"]),
                    _f(q.get("drift_kept")), _f(q.get("mean_abs_dw_over_step"), 4),
                    _pct(q.get("frac_dw_ge_half_step"))])
    return out


def print_summary(summary: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    for title, rows in ((f"SmolLM2-135M-Instruct, {summary['scenario']}: forget / retain / utility recall "
                         "(greedy completion)", table_rows(summary)),
                        ("forget recall [95% CI]; Δfp = excess over the same model at full precision [paired 95% CI]",
                         ci_rows(summary))) + ((("lr × steps sweep (" + summary["sweep"]["method"] + ")",
                                                 sweep_rows(summary["sweep"])),) if summary.get("sweep") else ()):
        t = Table(title=title)
        for i, c in enumerate(rows[0]):
            t.add_column(c, no_wrap=i == 0)
        for r in rows[1:]:
            t.add_row(*r)
        console.print(t)
    v = summary["verdict"]
    console.print(f"[bold {'red' if v['verdict'] == 'FAIL' else 'green'}]{v['verdict']}[/]: {v['reason']}")


def recall_figure(summary: dict) -> bytes:
    """Forget recall (95 % CI) per model and precision, grouped bars."""
    from ..report.plots import _fig_bytes, _plt

    plt = _plt()
    methods, precs, by = _by(summary)
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(precs) + 2), 3.6))
    w = 0.8 / len(methods)
    for i, m in enumerate(methods):
        ys = [by[(m, p)]["forget_recall"] for p in precs]
        err = [[y - by[(m, p)]["forget_recall_ci"][0] for y, p in zip(ys, precs)],
               [by[(m, p)]["forget_recall_ci"][1] - y for y, p in zip(ys, precs)]]
        ax.bar([x + (i - (len(methods) - 1) / 2) * w for x in range(len(precs))], ys, w, yerr=err, capsize=2, label=m)
    ax.set_xticks(range(len(precs)), [SHORT.get(p, p) for p in precs], rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("forget recall")
    ax.set_title("SmolLM2 (Q4_1 release): forget recall by deployment precision")
    ax.legend(fontsize=7, ncol=2)
    return _fig_bytes(fig)


def sweep_figure(sweep: dict) -> bytes:
    """Three panels vs lr (one line per step budget): forget recall at fp (dashed) and Q4_1 (solid);
    retain and utility recall at Q4_1; fraction of Q4_1 codes unchanged vs the target."""
    from ..report.plots import _fig_bytes, _plt

    plt = _plt()
    rows = sweep["rows"]
    t = {r["precision"]: r for r in rows if r["lr"] == 0}
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, st in enumerate(sweep["steps"]):
        c = colors[i % len(colors)]
        pts = {p: sorted((r["lr"], r) for r in rows if r["steps"] == st and r["precision"] == p and r["lr"] > 0)
               for p in ("fp", "q4_1")}
        lrs = [lr for lr, _ in pts["q4_1"]]
        axes[0].plot(lrs, [r["forget"] for _, r in pts["fp"]], "o--", color=c, label=f"{st} steps, fp")
        axes[0].plot(lrs, [r["forget"] for _, r in pts["q4_1"]], "s-", color=c, label=f"{st} steps, Q4_1")
        axes[1].plot(lrs, [r["retain"] for _, r in pts["q4_1"]], "s-", color=c, label=f"{st} steps, retain")
        axes[1].plot(lrs, [r["utility"] for _, r in pts["q4_1"]], "^:", color=c, label=f"{st} steps, utility")
        axes[2].plot(lrs, [100 * r["collapse_rate"] for _, r in pts["q4_1"]], "s-", color=c, label=f"{st} steps")
    if "q4_1" in t:
        axes[0].axhline(t["q4_1"]["forget"], color="grey", lw=1, label="target")
        axes[1].axhline(t["q4_1"]["retain"], color="grey", lw=1, label="target retain")
        axes[1].axhline(t["q4_1"]["utility"], color="grey", lw=1, ls=":", label="target utility")
    for ax, yl, ti in zip(axes, ["forget recall", "recall at Q4_1", "Q4_1 codes unchanged (%)"],
                          ["forget: full precision vs re-quantized", "what it costs (at Q4_1)",
                           "collapse rate vs the target"]):
        ax.set_xscale("log")
        ax.set_xlabel(f"learning rate ({sweep['method']}, constant)")
        ax.set_ylabel(yl)
        ax.set_title(ti, fontsize=10)
        ax.legend(fontsize=7)
    for ax in axes[:2]:
        ax.set_ylim(-0.02, 1.05)
    fig.suptitle("SmolLM2-135M Q4_1 release: when does unlearning survive re-quantization to Q4_1?", fontsize=11)
    return _fig_bytes(fig)


def write_smollm2_report(summary: dict, out: Path, figures_dir: Path | None = None) -> dict:
    """report.md / report.html in `out`; the sweep figure also as out/smollm2_sweep.png (and in figures_dir)."""
    out = Path(out)
    d, v = summary["data"], summary["verdict"]
    imgs = {"smollm2_recall.png": recall_figure(summary)}
    if summary.get("sweep"):
        imgs["smollm2_sweep.png"] = sweep_figure(summary["sweep"])
    for name, png in imgs.items():
        for where in [out] + ([Path(figures_dir)] if figures_dir else []):
            where.mkdir(parents=True, exist_ok=True)
            (where / name).write_bytes(png)
    diag_t = summary["diagnostics"].get("target", {})
    secs = [
        Section("What this is", (
            f"Target: SmolLM2-135M-Instruct as released (Q4_1 GGUF; its Linear weights sit exactly on the Q4_1 grid: "
            f"grid offset of the target under Q4_1 = {_f(diag_t.get('grid_offset_mean'), 4)} steps; 0.25 for a normally "
            f"trained model). Facts it knows: {d['known']}/{d['probed']}; forget {d['n_forget']} "
            f"({summary['config']['forget']}), retain {d['n_retain']} (evaluated: {d['n_retain_eval']}), utility "
            f"{d['n_utility']} ({summary['config']['utility']}; evaluated: {d['n_utility_eval']}). Cells: forget / retain "
            "/ utility recall (greedy completion, accepted answers). Each model is deployed at every precision; "
            "diagnostics compare it with the target under Q4_1, the release format.")),
        Section("Verdict", f"**{v['verdict']}** — {v['reason']}. Figures that need the retrained model — "
                + ", ".join(summary["needs_retrained"]) + " — are left out.", table_rows(summary),
                [("forget recall by precision (95% CI)", imgs["smollm2_recall.png"])]),
        Section("Forget recall with 95% CIs", "Paired bootstrap over forget facts "
                f"({summary['config']['n_boot']} resamples).", ci_rows(summary)),
    ]
    if summary.get("sweep"):
        sw = summary["sweep"]
        first = sw["first"]
        secs.append(Section("lr × steps sweep", (
            f"{sw['method']}, constant lr, checkpoints at {sw['steps']} steps. Smallest update (by lr × steps) whose Q4_1 "
            f"codes change at all: {_point(first['codes_change'])}; smallest whose Q4_1 forget recall is ≥ 0.05 below the "
            f"target's: {_point(first['forget_drops_at_release'])}."), sweep_rows(sw),
            [("lr × steps sweep", imgs["smollm2_sweep.png"])]))
    secs.append(Section("Provenance", f"model {summary['model']} ({summary.get('provenance')}); seed {summary['seed']}; "
                        f"wall time {summary['wall_s']} s; versions: "
                        + ", ".join(f"{k} {val}" for k, val in summary["versions"].items())))
    return write_report(out, "amnesiac reproduce smollm2: unlearning a quantized release, re-quantized", secs)
