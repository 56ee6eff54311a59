"""TOFU metrics (Maini et al. 2024) on per-token log-probs: docs/science.md §5 "Knowledge on QA".

Everything here is a pure function of *mean per-token log-probs* (log of the per-token geometric
mean probability P(a|q)^(1/|a|)), so it is testable on hand-made numbers; the evaluator
(amnesiac/evaluate.py) supplies them from one shared forward pass.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..registry import register
from .base import MetricResult, evaluates

# The 9 numbers of model utility: {probability, ROUGE, truth ratio} × {retain, real authors, world facts}.
UTILITY_SETS = ("retain", "real_authors", "world_facts")
UTILITY_METRICS = ("prob", "rougeL_recall", "truth_ratio")
UTILITY_KEYS = tuple(f"{s}/{m}" for s in UTILITY_SETS for m in UTILITY_METRICS)


def probability(mean_lp: Sequence[float]) -> np.ndarray:
    """Per item P(a|q)^(1/|a|) = exp(mean token log-prob) (§5 Probability)."""
    return np.exp(np.asarray(mean_lp, dtype=np.float64))


def normalized_probability(correct_mean_lp: Sequence[float], wrong_mean_lp: Sequence[Sequence[float]]) -> np.ndarray:
    """Real authors / world facts (§5): P(correct) / (P(correct) + Σ P(perturbed)), every P the per-token
    geometric mean (TOFU's code normalises exp(−avg loss) over the options the same way)."""
    pc = probability(correct_mean_lp)
    pw = np.array([probability(w).sum() for w in wrong_mean_lp], dtype=np.float64)
    return pc / (pc + pw)


@register("metrics", "truth_ratio")
def truth_ratio(para_mean_lp: Sequence[float], pert_mean_lp: Sequence[Sequence[float]]) -> np.ndarray:
    """Per item R = P̄(perturbed) / P(paraphrased) (§5 Truth ratio).

    Each P is the per-token geometric mean; the perturbed ones are averaged in log space, so
    log R = mean_j(mean_lp(pert_j)) − mean_lp(para). Ragged lists of perturbed answers are fine."""
    para = np.asarray(para_mean_lp, dtype=np.float64)
    pert = np.array([np.mean(np.asarray(p, dtype=np.float64)) for p in pert_mean_lp])
    if len(pert) != len(para):
        raise ValueError(f"{len(para)} paraphrased but {len(pert)} perturbed rows")
    return np.exp(pert - para)


def truth_ratio_forget_agg(R: Sequence[float]) -> float:
    """Forget-side aggregate: mean(min(R, 1/R)) (§5) — 1 when true and false answers are equally likely."""
    R = np.asarray(R, dtype=np.float64)
    return float(np.mean(np.minimum(R, 1.0 / R)))


def truth_ratio_retain_agg(R: Sequence[float]) -> float:
    """Retain-side aggregate: mean(max(0, 1 − R)) (§5) — 1 when the true answer dominates."""
    R = np.asarray(R, dtype=np.float64)
    return float(np.mean(np.maximum(0.0, 1.0 - R)))


@register("metrics", "forget_quality")
def forget_quality(R_unlearned: Sequence[float], R_retrained: Sequence[float]) -> MetricResult:
    """Forget quality (§5): p-value of scipy.stats.ks_2samp between per-item truth ratios on F of the unlearned
    and of the retrained model. Invariant to R → 1/R on both samples (one reference code uses 1/R)."""
    from scipy.stats import ks_2samp

    a = np.asarray(R_unlearned, dtype=np.float64)
    b = np.asarray(R_retrained, dtype=np.float64)
    res = ks_2samp(a, b)
    return MetricResult("forget_quality", float(res.pvalue), [], True,
                        {"ks_statistic": float(res.statistic), "n_unlearned": len(a), "n_retrained": len(b),
                         "section": "docs/science.md §5 forget quality"})


def harmonic_mean(values: Sequence[float]) -> float:
    """n / Σ 1/v; 0 when any value is 0 (scipy.stats.hmean's convention)."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return float("nan")
    if np.any(v < 0):
        raise ValueError("harmonic mean of negative values is undefined")
    if np.any(v == 0):
        return 0.0
    return float(len(v) / np.sum(1.0 / v))


@register("metrics", "model_utility")
def model_utility(values: Mapping[str, float]) -> MetricResult:
    """Model utility (§5): harmonic mean of the 9 numbers UTILITY_KEYS. When some are missing (a set not
    available, e.g. bios has no real authors), the mean is over those present, meta["complete"] is False and
    meta["label"] says "partial: k of 9" and which are missing, so it is never mistaken for TOFU's value."""
    present = {k: float(values[k]) for k in UTILITY_KEYS if k in values and values[k] is not None
               and np.isfinite(values[k])}
    missing = [k for k in UTILITY_KEYS if k not in present]
    label = "harmonic mean of all 9" if not missing else f"partial: harmonic mean of {len(present)} of 9 (missing {', '.join(missing)})"
    return MetricResult("model_utility", harmonic_mean(list(present.values())) if present else float("nan"), [], True,
                        {"components": present, "missing": missing, "n_components": len(present),
                         "complete": not missing, "label": label, "section": "docs/science.md §5 model utility"})


# ---- in `amnesiac eval` ----------------------------------------------------------------------------------------
@evaluates(truth_ratio, order=13)
def _eval_truth_ratio(ctx):
    """Per QA set with perturbed answers: R per item; value = the forget-side aggregate mean(min(R, 1/R)) on F,
    the retain-side mean(max(0, 1 − R)) elsewhere (TOFU's choice); both aggregates are 1 at the goal."""
    for name, (items, s) in ctx.qa.items():
        if "R" not in s:
            continue
        R = s["R"]
        fa, ra = truth_ratio_forget_agg(R), truth_ratio_retain_agg(R)
        yield MetricResult(f"{name}/truth_ratio", fa if name == "forget" else ra, R.tolist(), True,
                           {"aggregation": "mean(min(R,1/R))" if name == "forget" else "mean(max(0,1-R))",
                            "forget_agg": fa, "retain_agg": ra, "n": len(R),
                            "ci95": ctx.ci(np.minimum(R, 1 / R) if name == "forget" else np.maximum(0, 1 - R)),
                            "per_example_is": "R = P̄(perturbed)/P(paraphrased)", "section": "docs/science.md §5 truth ratio"})


@evaluates(forget_quality, order=20)
def _eval_forget_quality(ctx):
    fr = ctx.results.get("forget/truth_ratio")
    if fr is not None and ctx.retrained is not None and ctx.retrained.truth_ratios:
        fq = forget_quality(fr.per_example, ctx.retrained.truth_ratios)
        fq.meta["retrained_source"] = ctx.retrained.source
        yield fq


@evaluates(model_utility, order=21)
def _eval_model_utility(ctx):
    util = {k: ctx.results[k].value for k in UTILITY_KEYS if k in ctx.results}
    if util:
        yield model_utility(util)
