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
