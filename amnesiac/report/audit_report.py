"""The audit's report: verdict, recovery table with CIs, plots (recall per attack, recovery by bit width,
collapse rate per layer, MIA ROC)."""
from __future__ import annotations

import re
from pathlib import Path

from . import plots
from .render import Section, write_report


def _ci(c) -> str:
    return "-" if not c or c[0] != c[0] else f"[{c[0]:.2f}, {c[1]:.2f}]"


def recovery_table(summary: dict) -> list[list[str]]:
    head = ["attack", "forget recall (U)", "95% CI", "retain recall (U)", f"floor ({summary['recovery'][0]['floor'] if summary['recovery'] else '-'})",
            "excess", "95% CI", "recovery ratio", "95% CI", "significant"]
    rows = [head]
    for r in summary["recovery"]:
        rows.append([r["attack"], f"{r['forget_recall']:.3f}", _ci(r["forget_recall_ci"]),
                     "-" if r["retain_recall"] is None else f"{r['retain_recall']:.3f}", f"{r['floor_recall']:.3f}",
                     f"{r['excess']:+.3f}", _ci(r["excess_ci"]), f"{r['recovery_ratio']:.2f}", _ci(r["recovery_ratio_ci"]),
                     "yes" if r["significant"] else "no"])
    return rows


def print_audit(summary: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    rows = recovery_table(summary)
    t = Table(title="audit: forget-set knowledge under each attack")
    for c in rows[0]:
        t.add_column(c)
    for r in rows[1:]:
        t.add_row(*r)
    console.print(t)
    v = summary["verdict"]
    console.print(f"[bold {'red' if v['verdict'] == 'FAIL' else 'green'}]{v['verdict']}[/]: {v['reason']}")


def write_audit_report(summary: dict, out: Path) -> dict:
    v = summary["verdict"]
    rec = summary["recovery"]
    res = summary["results"]
    bars = [{"attack": r["attack"], "forget": r["forget_recall"], "forget_ci": r["forget_recall_ci"],
             "retain": r["retain_recall"] or 0.0,
             "retrained_forget": res.get("retrained", {}).get(r["attack"], {}).get("forget_em")} for r in rec]
    imgs = [("forget vs retain recall per attack (unlearned; black = retrained)", plots.recall_by_attack(bars))]
    by_bits = [(int(m.group(1)), r["recovery_ratio"]) for r in rec if (m := re.match(r"rtn(\d)", r["attack"]))]
    if by_bits:
        fp = next((r["recovery_ratio"] for r in rec if r["attack"] == "fp"), None)
        pts = by_bits + ([(16, fp)] if fp is not None else [])
        imgs.append(("recovery ratio (forget recall / target's) by bit width, RTN",
                     plots.lines_by_x({"unlearned": pts}, "bits (16 = full precision)", "recovery ratio",
                                      "recovery ratio by bit width", ylim=None)))
    for a, c in summary.get("collapse", {}).items():
        short = {k.replace("model.layers.", "L").replace(".weight", ""): x for k, x in c["per_layer"].items()}
        imgs.append((f"{a}: fraction of codes unchanged per layer", plots.bars(short, "collapse rate", f"{a}: collapse rate per layer")))
        break
    if summary.get("mia"):
        from sklearn.metrics import roc_curve

        curves = {}
        for m, d in summary["mia"].items():
            y = [1] * len(d["member_scores"]) + [0] * len(d["nonmember_scores"])
            fpr, tpr, _ = roc_curve(y, d["member_scores"] + d["nonmember_scores"])
            curves[m] = (fpr.tolist(), tpr.tolist(), d["loss_auc"])
        imgs.append(("MIA (LOSS) ROC, forget = member vs holdout", plots.roc(curves)))
    coll_rows = [["quantizer", "codes unchanged", "drift kept", "mean |Δw|/step", "grid offset mean"]]
    for a, c in summary.get("collapse", {}).items():
        o = c["overall"]
        coll_rows.append([a, f"{100 * o['collapse_rate']:.2f}%", f"{o.get('drift_kept', float('nan')):.3f}",
                          f"{o.get('mean_abs_dw_over_step', float('nan')):.4f}", f"{o.get('grid_offset_mean', float('nan')):.3f}"])
    secs = [Section("Verdict", f"**{v['verdict']}** — {v['reason']}"),
            Section("Recovery per attack", "Exact-match recall on the forget set of the unlearned model (U) under each "
                    "attack, against the floor; 95 % CIs from a paired bootstrap over forget items.", recovery_table(summary), imgs),
            Section("Collapse diagnostics (target vs unlearned, same quantizer)", "", coll_rows if len(coll_rows) > 1 else None)]
    if summary.get("skipped_attacks"):
        secs.append(Section("Skipped attacks", "\n\n".join(f"{k}: {x}" for k, x in summary["skipped_attacks"].items())))
    secs.append(Section("Provenance", f"models: {summary['models']}; seed {summary['seed']}; wall {summary['wall_s']} s; "
                        + ", ".join(f"{k} {x}" for k, x in summary["versions"].items())))
    return write_report(out, "amnesiac audit", secs)
