"""The TOFU-in-miniature table (terminal, Markdown, HTML) and its plot."""
from __future__ import annotations

from pathlib import Path

SHORT = {"fp": "fp", "8bit": "8-bit", "4bit": "4-bit", "3bit": "3-bit", "4bit_foreign": "4-bit*"}


def _f(x, nd=2) -> str:
    if x is None:
        return "-"
    if nd == "p":  # p-values span many decades
        return f"{x:.2g}" if x >= 1e-3 else f"{x:.1e}"
    return f"{x:.{nd}f}"


def table_rows(summary: dict, scenario: str) -> list[list[str]]:
    """Header + one row per model: forget quality / model utility / forget ROUGE-L recall per precision."""
    rows = [r for r in summary["rows"] if r["scenario"] == scenario]
    precs = list(dict.fromkeys(r["precision"] for r in rows))
    head = ["model"] + [f"{SHORT.get(p, p)} FQ / MU / F-ROUGE" for p in precs]
    out = [head]
    for m in dict.fromkeys(r["method"] for r in rows):
        by = {r["precision"]: r for r in rows if r["method"] == m}
        out.append([m] + [f"{_f(by[p]['forget_quality'], 'p')} / {_f(by[p]['model_utility'], 3)} / "
                          f"{_f(by[p]['forget_rougeL_recall'])}" if p in by else "-" for p in precs])
    return out


def learning_lines(summary: dict) -> list[str]:
    L = summary["learning"]
    lines = []
    for name, split in (("target", "full"), ("retrained", "retain90")):
        x = L[name]
        cut = " (cut by the time budget)" if x["cut_by_budget"] else ""
        lines.append(f"{name}: fine-tuned on {split} for {x['epochs_done']}/{x['epochs_planned']} epochs{cut} "
                     f"in {x['train_s']:.0f} s, final loss {x['final_loss']:.3f}; ROUGE-L recall at full precision: "
                     f"forget {_f(x['forget_rougeL_recall'])}, retain {_f(x['retain_rougeL_recall'])}")
    return lines


def print_table(summary: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    for sc in summary["config"]["scenarios"]:
        rows = table_rows(summary, sc)
        t = Table(title=f"TOFU {summary['config']['forget']} in miniature, scenario {sc}: forget quality (p) / "
                        "model utility / forget ROUGE-L recall")
        for i, c in enumerate(rows[0]):
            t.add_column(c, no_wrap=i == 0)  # value cells wrap in narrow terminals rather than being cut
        for r in rows[1:]:
            t.add_row(*r)
        console.print(t)
        v = summary.get("verdicts", {}).get(sc)
        if v and v.get("verdict"):
            colour = {"FAIL": "red", "PASS": "green"}.get(v["verdict"], "yellow")
            console.print(f"[bold {colour}]{v['verdict']}[/]: {v['reason']}")
    for line in learning_lines(summary):
        console.print(line)


def write_tofu_report(summary: dict, out: Path) -> dict:
    from ..report import Section, plots, write_report

    cfg = summary["config"]
    intro = (f"TOFU's protocol in miniature on the real TOFU data: tiny Llama ({summary['learning']['target']['n_params']:,} "
             f"parameters) fine-tuned on `full` (target) and on `retain{100 - int(cfg['forget'][-2:])}` (retrained), "
             f"`{cfg['forget']}` unlearned with {', '.join(m.upper() for m in cfg['methods'])}"
             f"{' and their SURE variants' if cfg['sure'] else ''} (lr {cfg['unlearn_lr']:g}, {cfg['unlearn_epochs']:g} "
             "epochs, constant). FQ = forget quality: KS-test p-value of the forget-set truth ratios against the "
             "retrained model's at the same precision (higher = closer to never having seen them). MU = model "
             "utility: harmonic mean of probability, ROUGE-L recall and truth ratio on retain, real authors and "
             "world facts (the base was pretrained on the real-authors and world-facts QA, standing in for a "
             "pretrained LLM's world knowledge). F-ROUGE = ROUGE-L recall of greedy answers on the forget set.\n\n"
             + "\n".join(learning_lines(summary)))
    secs = [Section("What this is", intro)]
    for sc in cfg["scenarios"]:
        rows = [r for r in summary["rows"] if r["scenario"] == sc]
        series: dict[str, list] = {}
        order = {p: i for i, p in enumerate(cfg["precisions"])}
        for r in rows:
            series.setdefault(r["method"], []).append((order[r["precision"]], r["forget_rougeL_recall"]))
        img = plots.lines_by_x(series, "precision: " + ", ".join(f"{i} = {p}" for p, i in order.items()),
                               "forget ROUGE-L recall", f"TOFU {cfg['forget']} ({sc}): forget ROUGE-L by precision", ylim=None)
        v = summary.get("verdicts", {}).get(sc) or {}
        text = f"**{v['verdict']}** — {v['reason']}" if v.get("verdict") else ""
        secs.append(Section(f"Scenario: {sc}", text, table_rows(summary, sc), [("forget ROUGE-L recall by precision", img)]))
    secs.append(Section("Run", f"wall time {summary['wall_s']} s (models {summary['models_s']} s); seed {summary['seed']}; "
                               f"steps {summary['step_s']}; versions {summary['versions']}"))
    return write_report(out, f"amnesiac reproduce tofu ({cfg['forget']})", secs, stem="report")
