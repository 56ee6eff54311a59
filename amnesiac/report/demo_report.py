"""Demo and audit reports: the paper-style table (terminal + Markdown/HTML) and their plots."""
from __future__ import annotations

from pathlib import Path

from . import plots
from .render import Section, write_report

COLS = ["fp", "8bit", "4bit", "3bit", "4bit_foreign"]
CALIBRATED_COLS = ["gptq4", "awq4", "gptq8", "awq8", "gptq4_g64"]
SHORT = {"fp": "fp", "8bit": "8b", "4bit": "4b", "3bit": "3b", "4bit_foreign": "4b*", "gptq4": "G4", "awq4": "A4",
         "gptq8": "G8", "awq8": "A8",
         "gptq4_g64": "G4/64"}
# the seed paper's layout: forget recall per quantizer family (columns) and bit width; RTN is the release grid
PAPER = [("RTN 8", "8bit"), ("RTN 4", "4bit"), ("GPTQ 8", "gptq8"), ("GPTQ 4", "gptq4"), ("AWQ 8", "awq8"), ("AWQ 4", "awq4")]


def _f(x, nd=2) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def table_rows(summary: dict, scenario: str) -> list[list[str]]:
    """Header + one row per method: forget/retain recall per precision, then 4-bit diagnostics."""
    rows = [r for r in summary["rows"] if r["scenario"] == scenario]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cols = columns(summary)
    head = ["method"] + [f"{SHORT[c]} F/R" for c in cols] + ["codes kept 4b", "drift kept 4b", "|Δw|/Δ 4b"]
    out = [head]
    for m in methods:
        by = {r["precision"]: r for r in rows if r["method"] == m}
        line = [m] + [f"{_f(by[c]['forget_recall'])} / {_f(by[c]['retain_recall'])}" if c in by else "-" for c in cols]
        d = by.get("4bit", {})
        line += [_f(None if d.get("collapse_rate") is None else 100 * d["collapse_rate"], 1) + ("%" if d.get("collapse_rate") is not None else ""),
                 _f(d.get("drift_kept")), _f(d.get("mean_abs_dw_over_4bit_step"), 3)]
        out.append(line)
    return out


def columns(summary: dict) -> list[str]:
    """The deployment columns this summary measured (calibrated ones only when the demo ran them)."""
    have = set(summary.get("precisions") or COLS)
    return [c for c in COLS + CALIBRATED_COLS if c in have]


def paper_rows(summary: dict, scenario: str) -> list[list[str]] | None:
    """Forget recall in the seed paper's layout (fp, then RTN / GPTQ / AWQ at 8 and 4 bits), or None when
    the calibrated deployments were not measured."""
    rows = [r for r in summary["rows"] if r["scenario"] == scenario]
    have = {r["precision"] for r in rows}
    if not {c for _, c in PAPER} <= have:
        return None
    out = [["method", "fp"] + [lab for lab, _ in PAPER]]
    for m in dict.fromkeys(r["method"] for r in rows):
        by = {r["precision"]: r["forget_recall"] for r in rows if r["method"] == m}
        out.append([m, _f(by.get("fp"))] + [_f(by.get(c)) for _, c in PAPER])
    return out


def print_table(summary: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    for sc in summary["config"]["scenarios"]:
        rows = table_rows(summary, sc)
        metric = summary.get("scoring", {}).get("metric", "exact_match")
        t = Table(title=f"scenario: {sc}  (forget / retain, {metric})")
        for i, c in enumerate(rows[0]):
            t.add_column(c, no_wrap=True) if i <= len(columns(summary)) else t.add_column(c)
        for r in rows[1:]:
            t.add_row(*r)
        console.print(t)
        v = summary["verdicts"][sc]
        colour = {"FAIL": "red", "PASS": "green"}.get(v["verdict"], "yellow")
        console.print(f"[bold {colour}]{v['verdict']}[/]: {v['reason']}")


def write_demo_report(summary: dict, out: Path) -> dict:
    secs = [Section("What this is", (
        "Tiny Llama target fine-tuned on fictitious people, unlearned on 10 % of them with small-update "
        "methods, their SURE variants and their quantization-aware `_ROBUST` variants (trained through the "
        "release grid, docs/science.md §2b), then quantized. Two scenarios: `trained` (target as fine-tuned) and "
        "`released-quantized` (target rounded onto a 4-bit symmetric group-64 grid first, as a quantized release). "
        f"Cells are forget / retain scores under {summary.get('scoring', {}).get('metric', 'exact_match')} "
        f"({summary.get('scoring', {}).get('reason', '')}). `4bit_foreign` is a different 4-bit grid "
        "(asymmetric, group 128)"
        + ("; G4/A4/G8/A8 are GPTQ and AWQ at 4 and 8 bits (group 128), calibrated on the retain set, and G4/64 "
           "GPTQ 4-bit at the release's group size 64 (GPTQ's symmetric grid, Δ = 2·max|w|/15: not the release's "
           "max|w|/7)"
           if summary["config"].get("calibrated") else "")
        + ("; `_BF16` rows unlearn the way the seed paper's code does (bf16 weights and AdamW states, no fp32 "
           "master copy), `_BF16MIX` rows with fp32 master weights and bf16 autocast, both on the same lr ladder "
           "and early stop (docs/science.md §1c); a `_BF16` row's 4-bit diagnostics compare it with the target cast to bf16"
           if any(p != "float32" for p in summary["config"].get("unlearn_precisions", ("float32",))) else "")
        + ". Verdict rule: docs/science.md §7 (paired bootstrap, Holm over every model × deployment of a scenario)."))]
    for sc in summary["config"]["scenarios"]:
        v = summary["verdicts"][sc]
        rows = [r for r in summary["rows"] if r["scenario"] == sc]
        series: dict[str, list] = {}
        bits = {"fp": 16, "8bit": 8, "4bit": 4, "3bit": 3}
        for r in rows:
            if r["precision"] in bits:
                series.setdefault(r["method"], []).append((bits[r["precision"]], r["forget_recall"]))
        img = plots.lines_by_x(series, "bits (16 = full precision)", "forget recall",
                               f"{sc}: forget recall by precision")
        layer_img = []
        coll = {k.split("/", 1)[1]: v for k, v in summary.get("collapse_per_layer", {}).items()
                if k.split("/", 1)[0] == sc}
        if coll:
            name, per = next(iter(coll.items()))
            short = {k.replace("model.layers.", "L").replace(".weight", "").replace("self_attn.", "").replace("mlp.", ""): v
                     for k, v in per.items()}
            layer_img = [(f"{sc}: {name} fraction of 4-bit codes unchanged per layer", plots.bars(short, "codes unchanged", f"{name}: collapse rate per layer"))]
        secs.append(Section(f"Scenario: {sc}", f"**{v['verdict']}** — {v['reason']}", table_rows(summary, sc),
                            [(f"{sc}: forget recall by precision", img)] + layer_img))
        paper = paper_rows(summary, sc)
        if paper:
            secs.append(Section(f"{sc}: RTN / GPTQ / AWQ at 8 and 4 bits (forget recall)",
                                "The seed paper's layout: one column per quantizer and bit width. RTN is the "
                                "release grid at 4 bits (symmetric, group 64) and per-channel at 8 bits; GPTQ "
                                "(symmetric) and AWQ (asymmetric) use group 128 and the retain set as calibration data.",
                                paper))
    secs.append(Section("Provenance", f"seed {summary['seed']}, wall time {summary['wall_s']} s, versions: "
                        + ", ".join(f"{k} {v}" for k, v in summary["versions"].items())))
    return write_report(out, "amnesiac demo: does unlearned knowledge come back under quantization?", secs)
