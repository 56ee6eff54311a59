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


def paired_test(x: Sequence[float], y: Sequence[float] | float, n_resamples: int = 10000, seed: int = 0,
                confidence: float = 0.95) -> dict[str, float]:
    """Is mean(x) above y? y is paired per item (same items, e.g. the retrained model on them) or a number.

    One implementation for every verdict (docs/science.md §7): the items are resampled jointly
    (paired bootstrap, `n_resamples` draws, seeded) and
    - the CI of the difference is BCa (scipy.stats.bootstrap, paired) where the sample allows it, else the
      percentile interval of the same draws (degenerate samples: every difference equal, n < 3);
    - p is one-sided, H0: mean(x − y) ≤ 0, read from the draws as (1 + #{d* ≤ 0}) / (1 + R) — never 0,
      so a correction for many attacks stays meaningful.
    Returns {"diff", "low", "high", "p", "n", "ci_method"}."""
    xa = np.asarray(x, dtype=np.float64)
    ya = np.full_like(xa, float(y)) if np.isscalar(y) else np.asarray(y, dtype=np.float64)
    if xa.ndim != 1 or xa.shape != ya.shape:
        raise ValueError(f"paired test needs two equal-length 1-d samples, got {xa.shape} and {ya.shape}")
    n = len(xa)
    if n == 0:
        return {"diff": float("nan"), "low": float("nan"), "high": float("nan"), "p": float("nan"), "n": 0,
                "ci_method": "none"}
    d = xa - ya
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, n, size=(n_resamples, n))].mean(axis=1)  # (R,) resampled mean differences
    p = float((1 + np.sum(boots <= 0)) / (1 + n_resamples))
    alpha = (1 - confidence) / 2
    low, high, method = float(np.quantile(boots, alpha)), float(np.quantile(boots, 1 - alpha)), "percentile"
    if n >= 3 and not np.all(d == d[0]):
        from scipy.stats import bootstrap

        try:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # scipy warns when BCa degenerates; checked below
                r = bootstrap((d,), np.mean, confidence_level=confidence, n_resamples=min(n_resamples, 2000),
                              method="BCa", random_state=np.random.default_rng(seed), vectorized=True)
            lo, hi = float(r.confidence_interval.low), float(r.confidence_interval.high)
            if np.isfinite(lo) and np.isfinite(hi):
                low, high, method = lo, hi, "BCa"
        except ValueError:  # BCa undefined for this sample: the percentile interval stands
            pass
    return {"diff": float(d.mean()), "low": low, "high": high, "p": p, "n": n, "ci_method": method}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (step-down; monotone; capped at 1). NaN stays NaN and is not
    counted among the tests. Reject H_i at level α when adjusted p_i < α: the family-wise error rate over
    all attacks of an audit is then ≤ α."""
    p = np.asarray(pvalues, dtype=np.float64)
    ok = np.flatnonzero(np.isfinite(p))
    out = np.full(p.shape, np.nan)
    m = len(ok)
    running = 0.0
    for rank, i in enumerate(ok[np.argsort(p[ok], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()
