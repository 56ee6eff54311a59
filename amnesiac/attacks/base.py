"""What every attack returns, and how its cost is measured.

An attack takes a model (and tokenizer) and returns an AttackResult: the transformed model when the
attack changes weights (quantization, relearning), or None when it only measures (prompt attacks,
probes), plus a JSON-able record {attack, config, cost, ...}. The audit calls any of them as
`apply_attack(name, model, tok, **config)`; the input model is never modified.
"""
from __future__ import annotations

import resource
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from ..registry import lookup


@dataclass
class AttackResult:
    model: Any | None  # the attacked model (a copy), or None for measuring-only attacks
    record: dict[str, Any] = field(default_factory=dict)  # {attack, config, cost, ...}; JSON-able


def _rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        return float("nan")


@contextmanager
def measure_cost() -> Iterator[dict]:
    """Fills the yielded dict with wall_s, rss_start_mb / rss_end_mb, peak_rss_mb (the process's
    high-water mark since start: on CPU a per-call peak cannot be isolated without a sampler) and,
    on CUDA, the peak allocated during the call (cuda_peak_mb)."""
    cost: dict[str, Any] = {"rss_start_mb": round(_rss_mb(), 1)}
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    try:
        yield cost
    finally:
        cost["wall_s"] = round(time.perf_counter() - t0, 4)
        cost["rss_end_mb"] = round(_rss_mb(), 1)
        cost["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        if cuda:
            cost["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        cost["threads"] = torch.get_num_threads()


def apply_attack(name: str, model, tok=None, **config) -> AttackResult:
    """Run the registered attack `name` (see `amnesiac ls attacks`) on a model; returns AttackResult."""
    from .. import attacks  # noqa: F401  (fills the registry)

    return lookup("attacks", name)(model, tok, **config)
