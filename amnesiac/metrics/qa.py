"""QA knowledge metrics on a model: exact-match recall, ROUGE-L recall, answer probability.

All generation goes through core.generate_greedy and all scoring through core.score_pairs.
"""
from __future__ import annotations

import numpy as np

from ..core import generate_greedy, score_pairs
from ..data.prompt import bind
from ..data.schema import QAItem
from ..registry import register
from .base import MetricResult, evaluates, mean
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


# ---- in `amnesiac eval`: one result per QA set, from the shared answers and scores ------------------------------
@evaluates(exact_match_recall, order=10)
def _eval_exact_match(ctx):
    for name, (items, s) in ctx.qa.items():
        yield ctx.result(f"{name}/exact_match", s["m"]["exact_match"], name != "forget",
                         {"section": "docs/science.md §5 exact-match recall", "outputs": s["gen"]})


@evaluates(rouge_recall, order=11)
def _eval_rouge(ctx):
    for name, (items, s) in ctx.qa.items():  # ROUGE-1 too (ROUGE-L is the measuring layer's, identical)
        r1 = mean(rouge_tofu(it.answer, o)["rouge1_recall"] for o, it in zip(s["gen"], items))
        yield ctx.result(f"{name}/rougeL_recall", s["m"]["rougeL_recall"], name != "forget",
                         {"rouge1_recall": r1, "section": "docs/science.md §5 ROUGE-L recall (TOFU: stemmer, recall)"})


@evaluates(answer_prob, order=12)
def _eval_prob(ctx):
    from . import tofu

    for name, (items, s) in ctx.qa.items():
        ans_mean = [r["lp"].mean() for r in s["ans"]]
        if "wrong_mean" in s:
            yield ctx.result(f"{name}/prob", tofu.normalized_probability(ans_mean, s["wrong_mean"]).tolist(),
                             name != "forget", {"normalised": True,
                                                "section": "docs/science.md §5 probability (options-normalised)"})
        else:
            yield ctx.result(f"{name}/prob", tofu.probability(ans_mean).tolist(), name != "forget",
                             {"normalised": False, "section": "docs/science.md §5 probability P(a|q)^(1/|a|)"})
