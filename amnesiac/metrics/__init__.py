"""Metrics; every one returns a MetricResult and declares whether higher is better.

Importing this package registers every metric of layer 2 (registry "metrics"); `recovery` (the verdict,
layer 3) registers when imported itself. Heavy libraries (scipy, sklearn, rouge-score, torch) are imported
inside the functions that need them.
"""
from . import memorization, mia, muse, qa, stats, text, tofu  # noqa: F401  (registration)
from .base import MetricResult

__all__ = ["MetricResult", "memorization", "mia", "muse", "qa", "stats", "text", "tofu"]
