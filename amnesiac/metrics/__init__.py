"""Metrics; every one returns a MetricResult and declares whether higher is better."""
from .base import MetricResult

__all__ = ["MetricResult"]
