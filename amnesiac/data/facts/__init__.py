"""Real-world knowledge probes (RWKU-style): short completion facts such as
"The capital of Germany is" → "Berlin", the ones a given model knows, and a forget / retain / utility split.

Data. `realworld.jsonl` (next to this file): 373 facts in 10 categories (capitals, languages,
currencies, landmarks, scientists' fields, people's professions, chemical symbols, continents,
authors of works, general knowledge), each `{prompt, answer, category, aliases?}`. A user file
(`--facts FILE`, or the data source `facts:<path>`) has `prompt`, `answer` and optionally
`category`, `aliases` (other accepted answers) and `split` (forget | retain | utility: used as is).

Representation. Each fact is a QAItem with the prompt as `question`, `attribute` = category and
`extra = {"format": "completion", "aliases": [...], "split": ...}`. Completion prompts are fed to the
model *verbatim*: no "Question: …\\nAnswer:" template (`item_prompt`), and the answer is scored as a
continuation with its leading space (`qa_answer`), exactly like QA answers. Code that builds prompts
with `qa_prompt(it.question)` must call `item_prompt(it)` instead for these items.

Correctness (`fact_correct`): greedy output and every accepted answer are normalised (accents
stripped, lower case, punctuation → spaces, a leading "the" dropped); the fact counts as known when
the output starts with an accepted answer followed by a word boundary ("Paris." yes, "Parisian" no,
"O" for oxygen yes, "Oxygen" no).

What this cannot give: the retrained reference θ_r (a model that never saw these facts) does not
exist for a pretrained LLM, so forget quality (KS test vs θ_r), PrivLeak (needs AUC(θ_r)) and any
"relative to retrained" figure are out of scope on this set; recall, answer probability and recovery
relative to the target (docs/science.md §1) are what it supports.
"""
from __future__ import annotations

import random
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from ...io import write_json, write_jsonl
from ...registry import register
from ..schema import DataError, QAItem, item_prompt, read_jsonl  # item_prompt re-exported

FACTS_FILE = Path(__file__).with_name("realworld.jsonl")
SPLITS = ("forget", "retain", "utility")


@dataclass
class FactsConfig:
    """Which facts a model knows (greedy) and how the known ones are split (`amnesiac models facts`)."""
    forget: str = "random:0.2"  # a category, or random:<fraction|count>
    utility: str | None = "elements"  # category held out as utility (disjoint)
    seed: int = 0  # seed of the random forget split
    batch_size: int = 32  # generation batch

    def __post_init__(self) -> None:
        from ...errors import check_number

        check_number("--batch-size", self.batch_size, ge=1, integer=True)


def _fact(r: dict, path: Path) -> QAItem:
    where = f"{path}:{r.get('__line__', '?')}"
    prompt = r.get("prompt", r.get("question"))
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(f"{where}: missing or empty field 'prompt' (has: {', '.join(k for k in r if k != '__line__')})")
    ans = r.get("answer")
    if not isinstance(ans, str) or not ans.strip():
        raise DataError(f"{where}: missing or empty field 'answer'")
    aliases = r.get("aliases", [])
    if isinstance(aliases, str):
        aliases = [aliases]
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise DataError(f"{where}: field 'aliases' must be a string or a list of strings")
    split = r.get("split")
    if split is not None and split not in SPLITS:
        raise DataError(f"{where}: field 'split' must be one of {', '.join(SPLITS)}, got {split!r}")
    cat = r.get("category")
    extra = {"format": "completion", "aliases": aliases}
    if split is not None:
        extra["split"] = split
    return QAItem(question=prompt.rstrip(), answer=ans.strip(), attribute=str(cat) if cat is not None else None,
                  extra=extra)


def load_facts(source: str | Path | None = None) -> list[QAItem]:
    """None → the built-in set; a path → that JSONL; 'all' / a category / 'cat1,cat2' → built-in subset."""
    if source is not None and Path(source).expanduser().exists():
        p = Path(source).expanduser()
        return [_fact(r, p) for r in read_jsonl(p)]
    items = [_fact(r, FACTS_FILE) for r in read_jsonl(FACTS_FILE)]
    if source is None or str(source) == "all":
        return items
    want = [c.strip() for c in str(source).split(",") if c.strip()]
    cats = categories(items)
    bad = [c for c in want if c not in cats]
    if bad:
        raise DataError(f"facts: unknown category {', '.join(bad)} and no such file; categories: {', '.join(cats)}, "
                        "or 'all', or a path to a JSONL file (prompt, answer, optional split)")
    return [it for it in items if it.attribute in want]


def categories(items: list[QAItem]) -> list[str]:
    return sorted({it.attribute for it in items if it.attribute})


@register("datasets", "facts")
def facts_source(split: str) -> list[QAItem]:
    """Real-world completion facts (capitals, languages, …): facts:all, facts:<category>, facts:<path>."""
    return load_facts(split)




def normalise(s: str) -> str:
    s = unicodedata.normalize("NFKD", s)
    s = "".join(ch for ch in s if not unicodedata.combining(ch)).lower()
    s = re.sub(r"[^0-9a-z]+", " ", s).strip()
    return s


def accepted(item: QAItem) -> list[str]:
    return [item.answer, *item.extra.get("aliases", [])]


def fact_correct(output: str, item: QAItem) -> bool:
    """Does the greedy output start with an accepted answer (normalised, at a word boundary)?"""
    out = normalise(output)
    for a in accepted(item):
        a = normalise(a)
        for o in (out, out[4:] if out.startswith("the ") and not a.startswith("the ") else None):
            if o is not None and a and (o == a or o.startswith(a + " ")):
                return True
    return False


def known_facts(model, tok, items: list[QAItem], batch_size: int = 32, max_new_tokens: int | None = None,
                progress: bool = False):
    """(known items, greedy outputs, correct flags), greedy via amnesiac.core.generate_greedy.
    max_new_tokens defaults to the longest accepted answer in tokens + 2 (room for a space/article)."""
    from ...core import generate_greedy

    if max_new_tokens is None:
        max_new_tokens = 2 + max(len(tok(" " + a, add_special_tokens=False)["input_ids"])
                                 for it in items for a in accepted(it))
    outs = generate_greedy(model, tok, [item_prompt(it) for it in items], max_new_tokens=max_new_tokens,
                           batch_size=batch_size, progress=progress)
    ok = [fact_correct(o, it) for o, it in zip(outs, items)]
    return [it for it, k in zip(items, ok) if k], outs, ok


def split_facts(items: list[QAItem], forget: str = "random:0.2", utility: str | None = "elements",
                seed: int = 0) -> dict[str, list[QAItem]]:
    """forget / retain / utility from (known) facts.

    Items with a `split` field keep it (a user file decides). Otherwise: utility = every item of the
    `utility` category (disjoint knowledge, measures collateral damage elsewhere); forget = a category
    name (or 'cat1,cat2'), or `random:<fraction>` / `random:<count>` of the remaining items (seeded);
    retain = the rest (neighbouring knowledge of the same kinds, as in RWKU)."""
    if any("split" in it.extra for it in items):
        missing = [it.question for it in items if "split" not in it.extra]
        if missing:
            raise DataError(f"facts: {len(missing)} items have no 'split' while others do (e.g. {missing[0]!r}); "
                            "give every item a split or none")
        return {s: [it for it in items if it.extra["split"] == s] for s in SPLITS}
    cats = categories(items)
    if utility and utility not in cats:
        raise DataError(f"utility category {utility!r} has no (known) facts; available: {', '.join(cats)}")
    util = [it for it in items if utility and it.attribute == utility]
    pool = [it for it in items if not (utility and it.attribute == utility)]
    if forget.startswith("random:"):
        v = float(forget.split(":", 1)[1])
        n = max(1, round(v * len(pool))) if v < 1 else int(v)
        if n >= len(pool):
            raise DataError(f"forget={forget} takes {n} of {len(pool)} items and leaves no retain set")
        idx = set(random.Random(seed).sample(range(len(pool)), n))
        fg = [it for i, it in enumerate(pool) if i in idx]
    else:
        want = [c.strip() for c in forget.split(",")]
        if utility in want:
            raise DataError(f"forget and utility must be disjoint; both name {utility!r}")
        bad = [c for c in want if c not in cats]
        if bad:
            raise DataError(f"forget category {', '.join(bad)} has no (known) facts; available: {', '.join(cats)}")
        fg = [it for it in pool if it.attribute in want]
    fset = {id(it) for it in fg}
    return {"forget": fg, "retain": [it for it in pool if id(it) not in fset], "utility": util}


def category_counts(items: list[QAItem], correct: list[bool]) -> list[tuple[str, int, int]]:
    """(category, known, total) per category of the probed items, then ("all", known, total)."""
    rows = []
    for c in sorted({it.attribute or "-" for it in items}):
        flags = [ok for it, ok in zip(items, correct) if (it.attribute or "-") == c]
        rows.append((c, sum(flags), len(flags)))
    return rows + [("all", sum(bool(x) for x in correct), len(items))]


def fact_json(item: QAItem, **more) -> dict:
    """Back to the facts file format (so a written split can be passed to --facts again)."""
    d = {"prompt": item.question, "answer": item.answer}
    if item.attribute:
        d["category"] = item.attribute
    if item.extra.get("aliases"):
        d["aliases"] = item.extra["aliases"]
    return {**d, **more}


def write_splits(out: str | Path, known: list[QAItem], splits: dict[str, list[QAItem]], probed: list[QAItem],
                 outputs: list[str]) -> Path:
    """out/{probe,known,forget,retain,utility}.jsonl + summary.json. `all_splits.jsonl` (known facts with
    their split) can be given back as --facts to reuse the same split."""
    out = Path(out)
    write_jsonl(out / "probe.jsonl", [fact_json(it, greedy=o, correct=fact_correct(o, it)) for it, o in zip(probed, outputs)])
    write_jsonl(out / "known.jsonl", [fact_json(it) for it in known])
    for s, its in splits.items():
        write_jsonl(out / f"{s}.jsonl", [fact_json(it) for it in its])
    write_jsonl(out / "all_splits.jsonl", [fact_json(it, split=s) for s, its in splits.items() for it in its])
    write_json(out / "summary.json", {"probed": len(probed), "known": len(known),
                                      **{s: len(v) for s, v in splits.items()},
                                      "known_by_category": {c: sum(1 for it in known if it.attribute == c)
                                                            for c in categories(probed)}})
    return out
