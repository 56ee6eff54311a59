"""Prompt attacks (docs/science.md §4): the same questions, asked differently. No weight changes.

A transformation maps each QA item to one or more prompt variants (`list[list[str]]`, one inner list
per item). The runner generates greedily (core.generate_greedy) and scores exact match per variant;
it reports the mean over variants and best-of-n ("any"): an attacker who may try several phrasings
counts a fact as recovered if any of them works. The metric runner can call `build_prompts` and use
the prompts with any generation metric.

Transformations:
- question         : the plain question (the baseline every other row is compared with).
- paraphrase       : each paraphrased question (TOFU `paraphrased_question`).
- icl_forget       : k other forget facts with their true answers as few-shot context (in-context
                     "ununlearning": facts about F in the prompt), other people's facts preferred.
- icl_same_person  : k other facts about the same person as context (a hint that names the person's
                     profile without the asked attribute).
- icl_retain       : k retain facts as context (control: format priming without forget knowledge).
- step_by_step     : "Let's think step by step." between question and answer cue.
- cloze            : statement completion instead of a question, cut from the paraphrased answer
                     sentence before the answer ("X was born in the year" → " 1975").
Context blocks use MUSE KnowMem's layout: "Question: {q}\nAnswer: {a}\n\n" per example.

Every prompt is built through the run's prompt format (data.prompt; `fmt`, default "Question: {q}\nAnswer:"):
in a chat format the context examples become earlier user/assistant turns and "Let's think step by step."
ends the user message. Cloze statements are continued verbatim in every format.
"""
from __future__ import annotations

import random
from typing import Callable

from ..core import generate_greedy
from ..data.prompt import bind
from ..data.schema import QAItem
from ..metrics.base import MetricResult, mean
from ..metrics.text import exact_match
from ..registry import register
from .base import AttackResult, auditable, measure_cost

TRANSFORMS: dict[str, Callable] = {}
STOPS: dict[str, tuple[str, ...]] = {}  # stop strings to generate with, per transform (cloze also stops at ". ")
ALIASES = {"step": "step_by_step", "paraphrased": "paraphrase"}


def transform(name: str, stops: tuple[str, ...] = ("\n",)):
    def deco(fn):
        TRANSFORMS[name] = fn
        STOPS[name] = stops
        return fn
    return deco


def _shots(fmt, shots: list[QAItem], it: QAItem) -> str:
    return fmt.few_shot([(s.question, s.answer) for s in shots], it.question)


@transform("question")
def _question(items, fmt, pool=None, k=3, seed=0):
    return [[fmt.prompt(it.question)] for it in items]


@transform("paraphrase")
def _paraphrase(items, fmt, pool=None, k=3, seed=0):
    return [[fmt.prompt(q) for q in it.paraphrased_questions] for it in items]


@transform("icl_forget")
def _icl_forget(items, fmt, pool=None, k=3, seed=0):
    rng = random.Random(seed)
    out = []
    for i, it in enumerate(items):
        others = [o for o in items if o.person != it.person or it.person is None and o is not it]
        others = others or [o for j, o in enumerate(items) if j != i]
        shots = rng.sample(others, min(k, len(others)))
        out.append([_shots(fmt, shots, it)])
    return out


@transform("icl_same_person")
def _icl_same_person(items, fmt, pool=None, k=3, seed=0):
    rng = random.Random(seed)
    everyone = list(items) + list(pool or [])
    out = []
    for it in items:
        same = [o for o in everyone if it.person is not None and o.person == it.person and o.question != it.question]
        shots = rng.sample(same, min(k, len(same)))
        out.append([_shots(fmt, shots, it)] if shots else [])
    return out


@transform("icl_retain")
def _icl_retain(items, fmt, pool=None, k=3, seed=0):
    if not pool:
        raise ValueError("icl_retain needs pool=<retain items>")
    rng = random.Random(seed)
    return [[_shots(fmt, rng.sample(list(pool), min(k, len(pool))), it)] for it in items]


@transform("step_by_step")
def _step(items, fmt, pool=None, k=3, seed=0):
    # the default format gives "Question: q\nLet's think step by step.\nAnswer:"
    return [[fmt.prompt(f"{it.question}\nLet's think step by step.")] for it in items]


@transform("cloze", stops=("\n", ". "))
def _cloze(items, fmt, pool=None, k=3, seed=0):
    out = []
    for it in items:
        sent, ans = it.paraphrased_answer or "", it.answer.strip()
        cut = sent.find(ans)
        out.append([sent[:cut].rstrip()] if cut > 0 else [])
    return out


def build_prompts(name: str, items: list[QAItem], pool: list[QAItem] | None = None, k: int = 3,
                  seed: int = 0, fmt=None) -> list[list[str]]:
    """Prompt variants per item; `fmt`: a data.prompt.BoundFormat (a chat format must be bound to its tokenizer),
    a plain PromptFormat or template string, or None (the default format)."""
    name = ALIASES.get(name, name)
    if name not in TRANSFORMS:
        raise KeyError(f"unknown prompt transform {name!r}; available: {', '.join(TRANSFORMS)}")
    return TRANSFORMS[name](items, bind(fmt, getattr(fmt, "tok", None)), pool=pool, k=k, seed=seed)


def prompt_recall(model, tok, items: list[QAItem], name: str, pool=None, k: int = 3, seed: int = 0,
                  max_new_tokens: int = 16, batch_size: int = 32, fmt=None) -> MetricResult:
    """Exact-match recall under one transformation. value = mean over variants (per item, then
    items with ≥1 variant); meta.any = best-of-n; items the transform cannot phrase are left out."""
    name = ALIASES.get(name, name)
    variants = build_prompts(name, items, pool, k, seed, fmt=bind(fmt, tok))
    flat = [(i, p) for i, vs in enumerate(variants) for p in vs]
    outs = generate_greedy(model, tok, [p for _, p in flat], max_new_tokens=max_new_tokens,
                           stop_strings=list(STOPS[name]), batch_size=batch_size) if flat else []
    hits: dict[int, list[float]] = {}
    for (i, _), o in zip(flat, outs):
        hits.setdefault(i, []).append(exact_match(o, items[i].answer))
    per = [mean(hits[i]) if i in hits else None for i in range(len(items))]
    scored = [p for p in per if p is not None]
    return MetricResult(f"exact_match_recall[{name}]", mean(scored), per, True,
                        {"transform": name, "any": mean(max(hits[i]) for i in hits), "n_items": len(items),
                         "n_scored": len(scored), "n_prompts": len(flat), "k": k,
                         "example_prompt": flat[0][1] if flat else None})


@register("attacks", "prompts")
def prompt_attack(model, tok, items=None, transforms: list[str] | str = "all", pool=None, k: int = 3, seed: int = 0,
                  max_new_tokens: int = 16, batch_size: int = 32, fmt=None) -> AttackResult:
    """Prompt rewriting / in-context hints (measures, returns no model): recall per transformation."""
    if not items:
        raise ValueError("prompts needs items=<forget-set QAItems>")
    names = list(TRANSFORMS) if transforms == "all" else ([transforms] if isinstance(transforms, str) else list(transforms))
    if "icl_retain" in names and not pool and transforms == "all":
        names.remove("icl_retain")  # needs a retain pool; skipped rather than failing "all"
    res = {}
    b = bind(fmt, tok)
    with measure_cost() as cost:
        for n in names:
            res[n] = prompt_recall(model, tok, items, n, pool, k, seed, max_new_tokens, batch_size, b).to_json()
    return AttackResult(None, {"attack": "prompts", "config": {"transforms": names, "k": k, "seed": seed},
                               "prompt_format": b.record(), "cost": cost, "results": res})


# "question" is the unattacked prompt (the fp row) and "icl_retain" a benign control: neither is an attack
_NOT_ATTACKS = ("question", "icl_retain")


def _prompt_names() -> list[str]:
    return [n for n in TRANSFORMS if n not in _NOT_ATTACKS]


def inapplicable(name: str, items: list[QAItem], seed: int = 0) -> str | None:
    """Why the prompt attack `name` cannot run on `items` (it rewrites none of them, so its row would repeat
    full precision's, e.g. paraphrase on data without TOFU's `paraphrased_question`); None when it applies or
    `name` is not a prompt attack. The default format is enough: a format changes the wrapping, not whether an
    item has a variant."""
    name = ALIASES.get(name, name)
    if name not in _prompt_names() or not items:
        return None
    if any(build_prompts(name, list(items), pool=list(items), seed=seed)):
        return None
    need = {"paraphrase": " (TOFU field paraphrased_question)", "cloze": " (TOFU field paraphrased_answer)"}
    return f"rewrites none of the {len(items)} forget items{need.get(name, '')}: its row would repeat full precision's"


@register("attacks", "prompt_variant")
@auditable(lambda name: name in _prompt_names(),
           lambda name, ctx: {"items": ctx.forget, "transform": name, "seed": ctx.seed, "fmt": ctx.fmt},
           modifies=False, vocabulary=_prompt_names)
def prompt_variant_attack(model, tok=None, items=None, transform: str = "paraphrase", k: int = 3,
                          seed: int = 0, fmt=None) -> AttackResult:
    """One rewritten prompt per forget item (the first of `k` variants; an item the transform cannot phrase
    keeps its question), for the caller to measure: the audit's prompt attacks. fmt: the prompt format."""
    if not items:
        raise ValueError("prompt_variant needs items=<forget-set QAItems>")
    b = bind(fmt, tok)
    variants = build_prompts(transform, items, pool=items, k=k, seed=seed, fmt=b)
    name = ALIASES.get(transform, transform)
    prompts = [v[0] if v else b.item_prompt(it) for v, it in zip(variants, items)]
    return AttackResult(None, {"attack": "prompt_variant", "config": {"transform": name, "k": k, "seed": seed},
                               "n_rewritten": sum(1 for v in variants if v),
                                "prompt_format": b.record()},
                        prompts=prompts, stop_strings=STOPS[name], measure_retain=False)
