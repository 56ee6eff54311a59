"""QA knowledge metrics on a model: exact-match recall, ROUGE-L recall, answer probability.

All generation goes through core.generate_greedy and all scoring through core.score_pairs.
"""
from __future__ import annotations

import numpy as np

from ..core import generate_greedy, score_pairs
from ..data.prompt import bind
from ..data.schema import QAItem
from ..registry import register
from .base import MetricResult, mean
from .text import exact_match, rouge_tofu


def qa_generate(model, tok, items: list[QAItem], max_new_tokens: int = 16, batch_size: int = 32,
                fmt=None, questions: list[str] | None = None, progress: bool = False) -> list[str]:
    """Greedy answers (first line) to each item (or to `questions`) prompted through `fmt` (data.prompt; None: default)."""
    b = bind(fmt, tok)
    prompts = [b.prompt(q) for q in questions] if questions is not None else [b.item_prompt(it) for it in items]
    return generate_greedy(model, tok, prompts, max_new_tokens=max_new_tokens,
                           stop_strings=["\n"], batch_size=batch_size, progress=progress)


@register("metrics", "exact_match_recall")
def exact_match_recall(model, tok, items: list[QAItem], outputs: list[str] | None = None, **kw) -> MetricResult:
    """Fraction of items whose greedy answer, normalised, equals the gold answer (docs/science.md §5, bios)."""
    outs = outputs if outputs is not None else qa_generate(model, tok, items, **kw)
    per = [exact_match(o, it.answer) for o, it in zip(outs, items)]
    return MetricResult("exact_match_recall", mean(per), per, True,
                        {"outputs": outs, "n": len(items)})


@register("metrics", "rouge_recall")
def rouge_recall(model, tok, items: list[QAItem], outputs: list[str] | None = None, **kw) -> MetricResult:
    """TOFU ROUGE-L recall of the greedy answer vs the gold answer (use_stemmer=True)."""
    outs = outputs if outputs is not None else qa_generate(model, tok, items, **kw)
    per = [rouge_tofu(it.answer, o)["rougeL_recall"] for o, it in zip(outs, items)]
    return MetricResult("rougeL_recall", mean(per), per, True, {"n": len(items)})


@register("metrics", "answer_prob")
def answer_prob(model, tok, items: list[QAItem], batch_size: int = 32, fmt=None) -> MetricResult:
    """TOFU probability: P(a|q)^(1/|a|), the per-token geometric mean (docs/science.md §5)."""
    b = bind(fmt, tok)
    sc = score_pairs(model, tok, [b.item_prompt(it) for it in items],
                     [b.item_answer(it, it.answer) for it in items], batch_size=batch_size)
    per = np.exp(sc.mean).tolist()
    return MetricResult("answer_prob", mean(per), per, True, {"n": len(items)})
