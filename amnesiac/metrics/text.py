"""String metrics: answer normalisation, exact match, ROUGE variants (docs/science.md §5)."""
from __future__ import annotations

from functools import lru_cache

from ..data.answers import exact_match, normalize_answer  # noqa: F401  (one definition, re-exported)


@lru_cache(maxsize=4)
def _scorer(types: tuple[str, ...], stem: bool):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(types), use_stemmer=stem)


def rouge_tofu(gold: str, prediction: str) -> dict[str, float]:
    """TOFU: RougeScorer(["rouge1","rougeL"], use_stemmer=True), *recall* (docs/science.md §5)."""
    s = _scorer(("rouge1", "rougeL"), True).score(gold, prediction)
    return {"rouge1_recall": s["rouge1"].recall, "rougeL_recall": s["rougeL"].recall}


def rouge_muse(gold: str, prediction: str) -> dict[str, float]:
    """MUSE: RougeScorer(["rougeL"], use_stemmer=False), score(target=gt, prediction=output); F1 is the value,
    recall also reported (docs/science.md §5). ROUGE-1 is kept by MUSE's code too."""
    s = _scorer(("rouge1", "rougeL"), False).score(gold, prediction)
    return {"rougeL_f1": s["rougeL"].fmeasure, "rougeL_recall": s["rougeL"].recall, "rouge1_f1": s["rouge1"].fmeasure}
