"""Recovery: how much forgotten knowledge an attack brings back (docs/science.md §5 "Recovery").

m is a knowledge metric on F where higher = more remembered (e.g. forget exact-match or VerbMem).
- recovery ratio      = m(θ_u, attack) / m(θ_t)                       (the paper's %)
- recovered fraction  = (m(θ_u, attack) − m(θ_u)) / (m(θ_t) − m(θ_u))
θ_r is the floor: what a model that never saw F gets *under the same attack* (quantizing or relearning a
retrained model also moves its numbers). When it is given, the floor-relative forms are reported too:
- recovery ratio above floor     = (m(θ_u, attack) − m(θ_r, attack)) / (m(θ_t) − m(θ_r, attack))
- excess over floor              =  m(θ_u, attack) − m(θ_r, attack)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..registry import register
from .base import MetricResult


def _div(a: float, b: float) -> float:
    return a / b if b != 0 else float("nan")


def recovery_ratio(m_attacked: float, m_target: float) -> float:
    return _div(m_attacked, m_target)


def recovered_fraction(m_attacked: float, m_unlearned: float, m_target: float) -> float:
    return _div(m_attacked - m_unlearned, m_target - m_unlearned)


@register("metrics", "recovery")
def recovery(metric: str, m_target: float, m_unlearned: float, m_attacked: float,
             m_retrained_attacked: float | None = None, attack: str = "") -> list[MetricResult]:
    """All recovery numbers for one metric and one attack. Higher = more knowledge came back, so
    higher_is_better=False from the unlearning side (an audit wants them ≈ the floor)."""
    meta = {"metric": metric, "attack": attack, "m_target": m_target, "m_unlearned": m_unlearned,
            "m_attacked": m_attacked, "m_retrained_attacked": m_retrained_attacked, "section": "docs/science.md §5 Recovery"}
    out = [MetricResult("recovery_ratio", recovery_ratio(m_attacked, m_target), [], False, meta),
           MetricResult("recovered_fraction", recovered_fraction(m_attacked, m_unlearned, m_target), [], False, meta)]
    if m_retrained_attacked is not None:
        floor = m_retrained_attacked
        out += [MetricResult("recovery_ratio_above_floor", _div(m_attacked - floor, m_target - floor), [], False, meta),
                MetricResult("excess_over_floor", m_attacked - floor, [], False, meta),
                MetricResult("floor_recovery_ratio", recovery_ratio(floor, m_target), [], False, meta)]
    return out


# ----------------------------------------------------------------------------- the verdict (§7)

ALPHA = 0.025  # one-sided level per family after Holm: at one attack, the same as "95 % CI above 0"
MARGIN = 0.05  # smallest difference of the verdict's metric (absolute) that counts as knowledge


@dataclass
class Judged:
    """One attack (or deployment) to judge; arrays are per item, aligned with each other.

    u: the unlearned model under the attack; floor: the retrained model under the *same* attack (None
    without one); u_fp: the unlearned model at full precision on the same items (None for the row that
    is the full-precision model itself); t_fp: the target at full precision on the same items."""
    attack: str
    u: Sequence[float]
    t_fp: Sequence[float]
    floor: Sequence[float] | None = None
    u_fp: Sequence[float] | None = None
    extra: dict = field(default_factory=dict)


def check_margin(margin: float) -> float:
    if not (isinstance(margin, (int, float)) and math.isfinite(margin) and 0 <= margin < 1):
        from ..errors import UserError

        raise UserError(f"margin must be a number with 0 ≤ margin < 1, got {margin!r}", "use e.g. --margin 0.05")
    return float(margin)


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def judge(rows: Sequence[Judged], metric: str, reason: str = "", *, retrained_fp: Sequence[float] | None = None,
          floor_value: float | None = None, margin: float = MARGIN, alpha: float = ALPHA, n_boot: int = 10000,
          seed: int = 0) -> dict:
    """The one verdict (docs/science.md §7) for audit, demo, sweep and reproduce.

    Per row, the knowledge "comes back" when U under the attack exceeds
      (a) the retrained model under the same attack (when there is one): excess = mean(u − floor), and
      (b) U's own full-precision level on the same items (rows other than full precision): gain = mean(u − u_fp),
    both by at least `margin`, each one-sided paired-bootstrap test significant; a row needing both takes the
    larger p (an intersection–union test). The p-values of all rows are Holm-adjusted together (many attacks
    are tried: the family-wise error stays ≤ alpha). A full-precision row (u_fp None) with a retrained model
    tests (a) alone: the knowledge was never removed.

    INCONCLUSIVE before anything else: the target must show the knowledge measurably, i.e. its full-precision
    score exceed the retrained model's on the same items (paired) — or `floor_value` without one (e.g. the
    target's score on held-out items, or 0) — by ≥ margin with p < alpha. Nothing can come back that was
    never measurable under this metric.

    Returns {"verdict": PASS|FAIL|INCONCLUSIVE, "metric", "metric_reason", "reason", "rows": [...],
    "target_check": {...}, "rule": {...}}."""
    from .stats import holm, paired_test

    margin = check_margin(margin)
    if not rows:
        raise ValueError("nothing to judge: no attack rows")
    rule = {"margin": margin, "alpha_one_sided": alpha, "correction": "Holm", "n_boot": n_boot, "seed": seed,
            "ci": "paired bootstrap, BCa where defined (else percentile), 95 %",
            "floor": "retrained model under the same attack" if retrained_fp is not None else
                     "the unlearned model's own full-precision level"}
    t_fp = np.asarray(rows[0].t_fp, dtype=np.float64)
    if retrained_fp is not None:
        tc = paired_test(t_fp, np.asarray(retrained_fp, dtype=np.float64), n_boot, seed)
        against = f"the retrained model ({float(np.mean(retrained_fp)):.3f})"
    else:
        fv = 0.0 if floor_value is None else float(floor_value)
        tc = paired_test(t_fp, fv, n_boot, seed)
        against = f"the floor {fv:.3f}"
    target_ok = tc["diff"] >= margin and tc["p"] < alpha
    target_check = {"target": float(t_fp.mean()), "against": against, **tc, "measurable": bool(target_ok)}

    out = []
    for r in rows:
        u = np.asarray(r.u, dtype=np.float64)
        t = np.asarray(r.t_fp, dtype=np.float64)
        row = {"attack": r.attack, "metric": metric, "value": float(u.mean()), "n": int(len(u)),
               "value_ci": list(_mean_ci(u, seed)), "target_fp": float(t.mean()),
               "recovery_ratio": _ratio(float(u.mean()), float(t.mean())), **r.extra}
        tests = []
        if r.floor is not None:
            ex = paired_test(u, np.asarray(r.floor, dtype=np.float64), n_boot, seed)
            row.update(floor_value=float(np.mean(r.floor)), excess=ex["diff"], excess_ci=[ex["low"], ex["high"]],
                       excess_p=ex["p"])
            tests.append(ex)
        if r.u_fp is not None:
            uf = np.asarray(r.u_fp, dtype=np.float64)
            g = paired_test(u, uf, n_boot, seed)
            den = float(t.mean() - uf.mean())
            row.update(unlearned_fp=float(uf.mean()), gain_over_fp=g["diff"], gain_ci=[g["low"], g["high"]],
                       gain_p=g["p"], recovered_fraction=(g["diff"] / den) if den > 0 else float("nan"))
            tests.append(g)
        if tests:
            row["effect"] = min(x["diff"] for x in tests)  # what must reach the margin in every test
            row["p"] = max(x["p"] for x in tests)
        else:  # the full-precision row without a retrained model is its own floor: nothing to test
            row["effect"], row["p"] = float("nan"), float("nan")
        out.append(row)
    for row, padj in zip(out, holm([r["p"] for r in out])):
        row["p_holm"] = padj
        row["significant"] = bool(np.isfinite(padj) and padj < alpha and row["effect"] >= margin)

    res = {"metric": metric, "metric_reason": reason, "rows": out, "target_check": target_check, "rule": rule}
    if not target_ok:
        return {**res, "verdict": "INCONCLUSIVE", "worst_attack": None,
                "reason": f"under {metric} the target scores {target_check['target']:.3f} on the forget set, not "
                          f"measurably above {against} (difference {tc['diff']:+.3f}, 95% CI [{tc['low']:+.3f}, "
                          f"{tc['high']:+.3f}], need ≥ {margin} with p < {alpha}): nothing measurable could come back"}
    bad = [r for r in out if r["significant"]]
    if not bad:
        worst = max(out, key=lambda r: (r["effect"] if np.isfinite(r["effect"]) else -np.inf))
        return {**res, "verdict": "PASS", "worst_attack": worst["attack"],
                "reason": f"no attack brought {metric} back above {rule['floor']} (rule: difference ≥ {margin}, "
                          f"Holm-adjusted one-sided p < {alpha}); closest: {worst['attack']} "
                          f"({worst['value']:.3f}, effect {worst['effect']:+.3f})"}
    w = max(bad, key=lambda r: r["effect"])
    parts = []
    if "excess" in w:
        parts.append(f"vs retrained {w['floor_value']:.3f}: {w['excess']:+.3f} [{w['excess_ci'][0]:+.3f}, "
                     f"{w['excess_ci'][1]:+.3f}]")
    if "gain_over_fp" in w:
        parts.append(f"vs its own full precision {w['unlearned_fp']:.3f}: {w['gain_over_fp']:+.3f} "
                     f"[{w['gain_ci'][0]:+.3f}, {w['gain_ci'][1]:+.3f}]")
    what = "the knowledge comes back" if "gain_over_fp" in w else "the knowledge was never removed"
    return {**res, "verdict": "FAIL", "worst_attack": w["attack"], "failing_attacks": [r["attack"] for r in bad],
            "reason": f"under {w['attack']} {metric} is {w['value']:.3f} ({'; '.join(parts)}; Holm p "
                      f"{w['p_holm']:.2g}): {what}; recovery ratio vs target {w['recovery_ratio']:.2f}"}


def _mean_ci(x: np.ndarray, seed: int) -> tuple[float, float]:
    from .stats import bootstrap_ci

    return bootstrap_ci(x, seed=seed)
