"""Exact memorisation and extraction strength from teacher-forced argmax predictions (docs/science.md §5).

Inputs per item: the answer's token ids y (length n) and the model's argmax prediction at each of those
positions given the true prefix (core.score_pairs(..., with_argmax=True)).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..registry import register
from .base import MetricResult, evaluates, mean


def exact_memorization(argmax_ids: Sequence[int], ids: Sequence[int]) -> float:
    """Fraction of answer tokens the model predicts exactly under teacher forcing (Tirumala et al. 2022)."""
    a, y = np.asarray(argmax_ids), np.asarray(ids)
    return float(np.mean(a == y)) if len(y) else float("nan")


def extraction_strength(argmax_ids: Sequence[int], ids: Sequence[int]) -> float:
    """ES = 1 − k/|y| for the smallest k such that the argmax predictions match y from position k on (§5).

    Teacher-forced argmax matching y[k:] is the same as greedy decoding from prefix y[:k] reproducing y[k:].
    k = index after the last mismatch (0 when everything matches → ES = 1; last token wrong → ES = 0)."""
    a, y = np.asarray(argmax_ids), np.asarray(ids)
    n = len(y)
    if n == 0:
        return float("nan")
    wrong = np.nonzero(a != y)[0]
    k = int(wrong[-1]) + 1 if len(wrong) else 0
    return 1.0 - k / n


@register("metrics", "memorization")
def memorization_results(argmax_ids: list, ids: list, prefix: str = "", higher_is_better: bool = True) -> list[MetricResult]:
    """Exact memorisation and extraction strength per item (teacher-forced argmax vs answer tokens)."""
    em = [exact_memorization(a, y) for a, y in zip(argmax_ids, ids)]
    es = [extraction_strength(a, y) for a, y in zip(argmax_ids, ids)]
    sec = {"section": "docs/science.md §5 extraction strength / exact memorisation", "n": len(ids)}
    return [MetricResult(f"{prefix}exact_memorization", mean(em), em, higher_is_better, sec),
            MetricResult(f"{prefix}extraction_strength", mean(es), es, higher_is_better, sec)]


@evaluates(memorization_results, order=14)
def _eval_memorization(ctx):
    for name, (items, s) in ctx.qa.items():
        for m in memorization_results([r["am"] for r in s["ans"]], [r["ids"] for r in s["ans"]], f"{name}/",
                                      name != "forget"):
            m.meta["ci95"] = ctx.ci(m.per_example)
            yield m
