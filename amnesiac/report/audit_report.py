"""The audit's report: verdict, recovery table with CIs, plots (recall per attack, recovery by bit width,
collapse rate per layer, MIA ROC)."""
from __future__ import annotations

import re
from pathlib import Path

from . import plots
from .render import Section, write_report


def _ci(c) -> str:
    return "-" if not c or c[0] is None or c[0] != c[0] else f"[{c[0]:.2f}, {c[1]:.2f}]"


def _f(x, fmt: str = ".3f") -> str:
    return "-" if x is None or x != x else format(x, fmt)


def recovery_table(summary: dict) -> list[list[str]]:
    m = summary["verdict"]["metric"]
    tasks = list(dict.fromkeys(t for r in summary["recovery"] for t in (r.get("utility") or {})))
    head = ["attack", f"{m} (U)", "95% CI", "retain (U)", *[f"utility: {t}" for t in tasks], "retrained", "excess",
            "95% CI", "U at fp", "gain", "95% CI", "recovery ratio", "Holm p", "significant"]
    rows = [head]
    for r in summary["recovery"]:
        util = [_f((r.get("utility") or {}).get(t)) for t in tasks]
        rows.append([r["attack"], _f(r["value"]), _ci(r.get("value_ci")), _f(r.get("retain")), *util,
                     _f(r.get("floor_value")), _f(r.get("excess"), "+.3f"), _ci(r.get("excess_ci")),
                     _f(r.get("unlearned_fp")), _f(r.get("gain_over_fp"), "+.3f"), _ci(r.get("gain_ci")),
                     _f(r.get("recovery_ratio"), ".2f"), _f(r.get("p_holm"), ".2g"), "yes" if r["significant"] else "no"])
    return rows


def metrics_table(summary: dict) -> list[list[str]]:
    """Every applicable metric of the unlearned model under every attack (mean [95% CI])."""
    keys = [f"{side}_{k}" for side in ("forget", "retain") for k in summary.get("metrics", [])]
    res = summary["results"].get("unlearned", {})
    keys = [k for k in keys if any(k in res.get(a, {}) for a in summary["attacks"])]
    rows = [["attack", *keys]]
    for a in summary["attacks"]:
        d = res.get(a, {})
        rows.append([a, *[f"{d[k]['mean']:.3f} {_ci(d[k]['ci'])}" if k in d else "-" for k in keys]])
    return rows


def _colour(verdict: str) -> str:
    return {"FAIL": "red", "PASS": "green"}.get(verdict, "yellow")


def print_audit(summary: dict, console=None) -> None:
    from rich.table import Table

    from .render import console as terminal

    console = console or terminal()
    rows = recovery_table(summary)
    keep = [j for j in range(len(rows[0])) if j == 0 or any(r[j] != "-" for r in rows[1:])]  # no all-empty columns
    t = Table(title=f"audit: forget-set knowledge under each attack ({summary['verdict']['metric']})")
    for j in keep:
        t.add_column(rows[0][j], no_wrap=j == 0)
    for r in rows[1:]:
        t.add_row(*[r[j] for j in keep])
    console.print(t)
    v = summary["verdict"]
    console.print(f"metric: {v['metric']} — {v['metric_reason']}")
    fp = next((r for r in summary["recovery"] if r["attack"] == "fp"), None)
    if fp is not None and fp.get("target_fp") is not None:  # a PASS means little when nothing was forgotten
        console.print(f"forgetting at full precision: target {fp['target_fp']:.3f} → unlearned {fp['value']:.3f} "
                      f"(kept {fp['recovery_ratio']:.0%} of the target's level)")
    for name, why in (summary.get("skipped_attacks") or {}).items():
        console.print(f"skipped {name}: {why}")
    console.print(f"[bold {_colour(v['verdict'])}]{v['verdict']}[/]: {v['reason']}")


def write_audit_report(summary: dict, out: Path) -> dict:
    v = summary["verdict"]
    rec = summary["recovery"]
    res = summary["results"]
    m = v["metric"]
    bars = [{"attack": r["attack"], "forget": r["value"], "forget_ci": r.get("value_ci"),
             "retain": r.get("retain") or 0.0,
             "retrained_forget": res.get("retrained", {}).get(r["attack"], {}).get(f"forget_{m}", {}).get("mean")}
            for r in rec]
    imgs = [(f"forget vs retain {m} per attack (unlearned; black = retrained)", plots.recall_by_attack(bars, ylabel=m))]
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
        # drift_kept is undefined (None) when U = T: nothing moved, so no drift to keep
        coll_rows.append([a, f"{100 * o['collapse_rate']:.2f}%", _f(o.get("drift_kept")),
                          _f(o.get("mean_abs_dw_over_step"), ".4f"), _f(o.get("grid_offset_mean"))])
    rule = v["rule"]
    tc = v["target_check"]
    secs = [Section("Verdict", f"**{v['verdict']}** — {v['reason']}\n\nMetric: **{m}** — {v['metric_reason']}.\n\n"
                    f"Target check: the target scores {tc['target']:.3f} vs {tc['against']} "
                    f"(difference {tc['diff']:+.3f}, 95% CI [{tc['low']:+.3f}, {tc['high']:+.3f}], p {tc['p']:.2g})."),
            Section("Recovery per attack", f"{m} on the forget set of the unlearned model (U) under each attack, against "
                    f"the retrained model under the same attack and U's own full-precision level; 95 % CIs from a paired "
                    f"bootstrap over forget items ({rule['ci']}); p one-sided, {rule['correction']}-adjusted over "
                    f"{len(rec)} attacks; a row is significant when every difference is ≥ {rule['margin']} and the "
                    f"adjusted p < {rule['alpha_one_sided']}.", recovery_table(summary), imgs),
            Section("Every metric under every attack (unlearned model)", "", metrics_table(summary)),
            Section("Collapse diagnostics (target vs unlearned, same quantizer)", "", coll_rows if len(coll_rows) > 1 else None)]
    if summary.get("skipped_attacks"):
        secs.append(Section("Skipped attacks", "\n\n".join(f"{k}: {x}" for k, x in summary["skipped_attacks"].items())))
    secs.append(Section("Provenance", f"models: {summary['models']}; seed {summary['seed']}; wall {summary['wall_s']} s; "
                        + ", ".join(f"{k} {x}" for k, x in summary["versions"].items())))
    return write_report(out, "amnesiac audit", secs)
