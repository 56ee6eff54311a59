"""Matplotlib figures for audit and demo reports, returned as PNG bytes (embedded in HTML as base64)."""
from __future__ import annotations

import io
from typing import Any


def _fig_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def recall_by_attack(rows: list[dict[str, Any]], title: str = "forget vs retain recall per attack",
                     ylabel: str = "exact-match recall") -> bytes:
    """rows: {attack, forget, forget_ci, retain, retain_ci, retrained_forget} (unlearned model)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(rows) + 2), 3.4))
    xs = range(len(rows))
    w = 0.38
    f = [r["forget"] for r in rows]
    rt = [r["retain"] for r in rows]

    def err(key, vals):
        lo = [v - (r.get(key) or [v, v])[0] for v, r in zip(vals, rows)]
        hi = [(r.get(key) or [v, v])[1] - v for v, r in zip(vals, rows)]
        return [lo, hi]

    ax.bar([x - w / 2 for x in xs], f, w, yerr=err("forget_ci", f), label="forget (unlearned)", color="#c0392b", capsize=2)
    ax.bar([x + w / 2 for x in xs], rt, w, yerr=err("retain_ci", rt), label="retain (unlearned)", color="#2e86c1", capsize=2)
    ref = [r.get("retrained_forget") for r in rows]
    if any(v is not None for v in ref):
        ax.scatter([x - w / 2 for x in xs], [v if v is not None else float("nan") for v in ref], marker="_", s=300,
                   color="black", label="forget (retrained)", zorder=3)
    ax.set_xticks(list(xs), [r["attack"] for r in rows], rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper right")
    return _fig_bytes(fig)


def lines_by_x(series: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str, title: str,
               logx: bool = False, ylim: tuple[float, float] | None = (0, 1.05)) -> bytes:
    """One line per series name: [(x, y), ...]."""
    plt = _plt()
    many = len(series) > 10  # the default cycle repeats after 10 colours: use tab20 and the legend outside
    fig, ax = plt.subplots(figsize=(7.5, 3.6) if many else (5.5, 3.4))
    colors = plt.get_cmap("tab20").colors if many else [None] * len(series)
    styles = {"_SURE": "--", "_ROBUST": ":"}  # variants of one method share its colour family, differ by dash
    for (name, pts), col in zip(series.items(), colors):
        pts = sorted(pts)
        ls = next((v for k, v in styles.items() if name.upper().endswith(k)), "-")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name, color=col, linestyle=ls)
    if logx:
        ax.set_xscale("log")
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if many:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:
        ax.legend(fontsize=8)
    return _fig_bytes(fig)


def bars(values: dict[str, float], ylabel: str, title: str, ylim: tuple[float, float] | None = (0, 1.0)) -> bytes:
    plt = _plt()
    names = list(values)
    fig, ax = plt.subplots(figsize=(max(5, 0.35 * len(names) + 2), 3.2))
    ax.bar(range(len(names)), [values[n] for n in names], color="#7d3c98")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _fig_bytes(fig)


def roc(curves: dict[str, tuple[list[float], list[float], float]], title: str = "MIA ROC (forget = member)") -> bytes:
    """curves: name -> (fpr, tpr, auc)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4, 4))
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.2f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    if len(curves) > 6:  # many curves: the legend goes outside so it hides none of them
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:
        ax.legend(fontsize=8)
    return _fig_bytes(fig)
