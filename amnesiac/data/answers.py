"""What counts as the same answer: SQuAD-style normalisation and exact match (docs/science.md §5).

Data-level rules (no model involved), so that the tiny models' training-to-criterion (models/) and the
metrics (metrics/text.py re-exports these) use one definition.
"""
from __future__ import annotations

import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD-style: lower case, drop punctuation and articles, collapse whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when the normalised first line of the prediction equals the normalised gold answer."""
    first = prediction.strip().split("\n", 1)[0] if prediction.strip() else ""
    return float(normalize_answer(first) == normalize_answer(gold))
