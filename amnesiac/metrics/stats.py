"""Confidence intervals: percentile bootstrap of a mean, and a paired bootstrap of a difference.

MUSE's reference code reports bootstrap 95 % CIs with scipy.stats.bootstrap, percentile method
(docs/science.md §5); `bootstrap_ci` is exactly that. `paired_bootstrap_ci` resamples *items* jointly for
two models evaluated on the same items (e.g. unlearned vs attacked), which is the right CI for a
difference because per-item values of the two models are correlated.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


def bootstrap_ci(values: Sequence[float], confidence: float = 0.95, n_resamples: int = 1000,
                 seed: int = 0, statistic: Callable = np.mean) -> tuple[float, float]:
    """(low, high) of scipy.stats.bootstrap(method="percentile") for `statistic` over items (§5, MUSE).

    Degenerate samples (fewer than 2 items, or all equal) give (v, v) instead of scipy's NaN."""
    from scipy.stats import bootstrap

    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return float("nan"), float("nan")
    if len(x) < 2 or np.all(x == x[0]):
        v = float(statistic(x))
        return v, v
    res = bootstrap((x,), statistic, confidence_level=confidence, n_resamples=n_resamples,
                    method="percentile", random_state=np.random.default_rng(seed), vectorized=True)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def paired_bootstrap_ci(a: Sequence[float], b: Sequence[float], confidence: float = 0.95,
                        n_resamples: int = 1000, seed: int = 0) -> dict[str, float]:
    """CI of mean(b) − mean(a) with the same resampled items on both sides (percentile method).

    Returns {"diff", "low", "high", "p_le_0"}: p_le_0 is the bootstrap fraction with diff ≤ 0, a one-sided
    check that b really exceeds a."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired bootstrap needs two equal-length 1-d samples, got {a.shape} and {b.shape}")
    d = b - a
    if len(d) == 0:
        return {"diff": float("nan"), "low": float("nan"), "high": float("nan"), "p_le_0": float("nan")}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d), size=(n_resamples, len(d)))  # (R, n) item indices
    boots = d[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    return {"diff": float(d.mean()), "low": float(np.quantile(boots, alpha)),
            "high": float(np.quantile(boots, 1 - alpha)), "p_le_0": float(np.mean(boots <= 0))}
