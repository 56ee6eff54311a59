"""The one measuring layer: what a model (attacked or not) knows of each data set, per item.

Every experiment (audit, demo, sweep, reproduce) calls `measure()`; it returns, for each set, per-item
scores under every knowledge metric that applies to the data (higher = more of the item known), all
computed through the one generator (core.generate) and the one log-prob module (core.logprobs):

- `exact_match`   normalised first line of the greedy answer == gold (short answers: bios facts);
- `fact`          greedy completion starts with an accepted answer (completion facts with aliases);
- `rougeL_recall` TOFU's ROUGE-L recall of the greedy answer vs the gold answer (stemmer on);
- `prob`          P(a|q)^(1/|a|), the per-token geometric mean (TOFU "probability");
- `truth_ratio`   max(0, 1 − R), R = P̄(perturbed)/P(paraphrased) (TOFU), where the data has both.

Which one decides a verdict is `Scoring.metric`, chosen from the data by `scoring_for` (or forced by
the user): exact match is only meaningful when answers are a few words; TOFU's answers (median 27
words) are scored by ROUGE-L recall, so a model that memorised them is seen as knowing them
(docs/science.md §5, §7). Generation length comes from the data: the longest gold answer + 16 tokens.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from .data.prompt import bind
from .data.schema import QAItem, is_completion, qa_answer
from .errors import UserError

METRICS = ("exact_match", "fact", "rougeL_recall", "prob", "truth_ratio")
SHORT_ANSWER_WORDS = 4  # median gold answer at most this many words → exact match is a fair test
GEN_SLACK = 16  # new tokens beyond the longest gold answer (room for a preamble such as "He was born in")
GEN_CAP = 200


@dataclass(frozen=True)
class Scoring:
    """How a data set is scored: the verdict's metric and why it was chosen."""
    metric: str
    reason: str

    def to_json(self) -> dict:
        return asdict(self)


def _words(s: str) -> int:
    return len(s.split())


def check_metric(metric: str | None) -> None:
    """An option naming a recall metric: None (chosen from the data) or one of METRICS."""
    if metric is not None and metric not in METRICS:
        raise UserError(f"unknown metric {metric!r}; available: {', '.join(METRICS)}")


def scoring_for(items: Sequence[QAItem], metric: str | None = None) -> Scoring:
    """The metric that decides "is this item known" for these items (`metric` overrides, with a check)."""
    if not items:
        raise UserError("no items to score: the forget set is empty")
    completion = all(is_completion(it) for it in items)
    has_tr = all(it.perturbed_answers for it in items)
    med = float(np.median([_words(it.answer) for it in items]))
    check_metric(metric)
    if metric is not None:
        if metric == "truth_ratio" and not has_tr:
            raise UserError("metric 'truth_ratio' needs perturbed_answer on every item; "
                             "available for this data: exact_match, fact, rougeL_recall, prob")
        return Scoring(metric, f"chosen by the user (--metric {metric}); median gold answer {med:g} words")
    if completion:
        return Scoring("fact", "completion facts: the greedy completion must start with an accepted answer")
    if med <= SHORT_ANSWER_WORDS:
        return Scoring("exact_match", f"short answers (median {med:g} words ≤ {SHORT_ANSWER_WORDS}): "
                                      "exact match of the normalised first line")
    return Scoring("rougeL_recall", f"long answers (median {med:g} words > {SHORT_ANSWER_WORDS}): exact match of "
                                    "free text is ≈ 0 even when memorised, so TOFU's ROUGE-L recall is used")


def answer_budget(tok, items: Sequence[QAItem], slack: int = GEN_SLACK) -> int:
    """New tokens to generate for a set: its longest gold answer (and aliases) in tokens + slack."""
    from .data.facts import accepted

    longest = max(len(tok(qa_answer(a), add_special_tokens=False)["input_ids"]) for it in items for a in accepted(it))
    return min(GEN_CAP, longest + slack)


def _fact_need(tok, it: QAItem) -> int:
    """Completion facts: room for the longest accepted answer + 2 tokens (a space, an article); fact_correct
    reads only the start of the output, so more tokens would not change the result."""
    from .data.facts import accepted

    return 2 + max(len(tok(" " + a, add_special_tokens=False)["input_ids"]) for a in accepted(it))


def _generate(run, tok, items, prompts, scoring: Scoring, stops, max_new_tokens: int | None = None) -> list[str]:
    if scoring.metric == "fact":  # items grouped by their own need (same batches as one call per need)
        need = [_fact_need(tok, it) for it in items]
        outs = [""] * len(items)
        for n in sorted(set(need)):
            idx = [i for i, k in enumerate(need) if k == n]
            for i, o in zip(idx, run.generate([prompts[i] for i in idx], n, list(stops or ()))):
                outs[i] = o
        return outs
    budget = max_new_tokens or answer_budget(tok, items)
    return run.generate(prompts, budget, list(stops if stops is not None else ("\n",)))


def measure(model, tok, sets: dict[str, Sequence[QAItem]], scoring: Scoring, *, batch_size: int = 32,
            fmt=None, prompts: dict[str, list[str]] | None = None,
            stop_strings: dict[str, Sequence[str]] | None = None, with_outputs: Sequence[str] = ("forget",),
            cache: bool = False, runner=None, raw: bool = False,
            max_new_tokens: int | None = None, truth_ratio: bool = True) -> dict[str, dict[str, list]]:
    """Per set, per metric, per item knowledge scores of `model` (as it is: attack it first).

    sets: name → items (e.g. {"forget": F, "retain": R}); empty sets are skipped.
    fmt: the prompt format (data.prompt.PromptFormat, a bound one, or a template string; None: the default):
    every prompt and answer continuation is built through it.
    prompts / stop_strings: per-set overrides (prompt attacks: paraphrases, in-context, cloze).
    Returns {set: {"exact_match": [...], "rougeL_recall": [...], "prob": [...], ["fact"], ["truth_ratio"],
    ["outputs"]}}; the scoring's metric is present wherever it applies (scoring_for checked it on the forget
    set; a retain set without perturbed answers has no truth_ratio, say). cache=True also keeps generations and scores
    on disk per model fingerprint (metrics.runner), which an experiment with its own cache does not need.
    runner: a metrics.runner.Runner to share (the eval verb scores more pairs of the same model through it);
    raw=True adds "_prompts", "_answers" (per item {lp, ids, mu, sd, am}: Min-K%++ statistics and teacher-forced
    argmax for memorisation and MIA) and "_R" (truth ratios R themselves) to each set's result.
    max_new_tokens: overrides the data's generation budget (exact match / ROUGE scorings only).
    truth_ratio=False skips TOFU's truth ratio where items carry perturbed answers: it scores 1 + k more
    continuations per item (k = 5 in TOFU), ~6/7 of the scoring time, for experiments that never read it."""
    from .data.facts import fact_correct
    from .metrics import tofu
    from .metrics.runner import Runner
    from .metrics.text import exact_match, rouge_tofu

    run = runner or Runner(model, tok, batch_size, cache=cache, model_hash=None if cache else "-")
    b = bind(fmt, tok)
    was = model.training
    model.eval()
    res: dict[str, dict[str, list]] = {}
    try:
        for name, items in sets.items():
            if not items:
                continue
            items = list(items)
            ps = (prompts or {}).get(name) or [b.item_prompt(it) for it in items]
            if len(ps) != len(items):
                raise ValueError(f"{len(ps)} prompts for {len(items)} items of set {name!r}")
            outs = _generate(run, tok, items, ps, scoring, (stop_strings or {}).get(name), max_new_tokens)
            r: dict[str, list] = {
                "exact_match": [exact_match(o, it.answer) for o, it in zip(outs, items)],
                "rougeL_recall": [rouge_tofu(it.answer, o)["rougeL_recall"] for o, it in zip(outs, items)],
            }
            if scoring.metric == "fact" or all(is_completion(it) for it in items):
                r["fact"] = [float(fact_correct(o, it)) for o, it in zip(outs, items)]
            ans = run.score(ps, [b.item_answer(it, it.answer) for it in items], raw, raw)
            r["prob"] = np.exp([a["lp"].mean() for a in ans]).round(6).tolist()
            if truth_ratio and all(it.perturbed_answers for it in items):
                # TOFU: the paraphrased answer against the perturbed ones; sets without paraphrases (real authors,
                # world facts) use the answer itself
                para = run.score(ps, [b.item_answer(it, it.paraphrased_answer or it.answer) for it in items])
                flat = run.score([p for p, it in zip(ps, items) for _ in it.perturbed_answers],
                                 [b.item_answer(it, a) for it in items for a in it.perturbed_answers])
                pert, i = [], 0
                for it in items:
                    pert.append([x["lp"].mean() for x in flat[i: i + len(it.perturbed_answers)]])
                    i += len(it.perturbed_answers)
                R = tofu.truth_ratio([x["lp"].mean() for x in para], pert)
                r["truth_ratio"] = np.maximum(0.0, 1.0 - R).round(6).tolist()
                if raw:
                    r["_R"] = R.tolist()
            if name in with_outputs:
                r["outputs"] = outs
            if raw:
                r["_prompts"], r["_answers"] = ps, ans
            res[name] = r
    finally:
        model.train(was)
    return res


def check_context(model_ref, texts: Sequence[str], extra_tokens: int = 0, what: str = "items",
                  hint: str = "shorten or drop them") -> None:
    """Refuse, before any model loads, texts that cannot fit the model's context: len(tokens) + extra_tokens
    (the generation budget) > max_position_embeddings. Reads only the tokenizer and config.json; a model that
    does not state its context (a .gguf, a hub id resolved later) is not checked here."""
    from .models.load import load_tokenizer, model_context

    ctx = model_context(model_ref)
    if not ctx or not texts:
        return
    tok = load_tokenizer(model_ref)
    lengths = [len(tok(t, add_special_tokens=True)["input_ids"]) + extra_tokens for t in texts]
    over = [n for n in lengths if n > ctx]
    if over:
        raise UserError(f"{len(over)} of {len(texts)} {what} need up to {max(over)} tokens (text + {extra_tokens} "
                        f"generated) but the model's context is {ctx} tokens", hint)
