"""One result schema for every metric: {name, value, per_example, higher_is_better, meta}."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class MetricResult:
    name: str
    value: float
    per_example: list[Any] = field(default_factory=list)
    higher_is_better: bool = True  # "higher = more knowledge kept" for knowledge metrics
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["value"] = None if self.value is None or not np.isfinite(self.value) else float(self.value)
        return d


def mean(xs) -> float:
    xs = list(xs)
    return float(np.mean(xs)) if xs else float("nan")


def evaluates(metric, order: int = 50):
    """Make `fn(ctx)` the registered `metric`'s part of `amnesiac eval` (amnesiac.evaluate runs every registered
    metric that has one, by `order`, then metrics of equal order by registration).

    fn(ctx) yields MetricResults (nothing when the data it needs is absent). ctx (evaluate.EvalContext) offers
    the shared, computed-once inputs: ctx.run (metrics.runner.Runner of the model: score / generate, cached),
    ctx.ref_run (the reference model's, or None), ctx.data (the EvalData parts), ctx.cfg (EvalConfig),
    ctx.retrained (θ_r's reference numbers, or None), ctx.qa ({set: (items, scores)} for every QA set present),
    ctx.results (what earlier metrics gave), ctx.membership() (member / non-member inputs of the MIA family, or
    None), ctx.privleak_auc(), and ctx.result(name, per_example, higher_is_better, meta) (a MetricResult with a
    bootstrap CI)."""
    def deco(fn):
        fn.order = order
        metric.evaluate = fn
        return fn

    return deco
