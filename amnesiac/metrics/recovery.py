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
