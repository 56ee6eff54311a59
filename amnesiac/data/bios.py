"""The embedded benchmark "bios": fictitious people, their biographies and QA, from a seed.

Nothing here can be known from elsewhere: names are built from syllables and the
person→attribute map is random. Attribute *values* come from small shared pools, so a
pretrained base model knows the vocabulary and the format but not who has which value.
QA records use the TOFU field schema, so every TOFU metric applies unchanged.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from .schema import QAItem

_ONSETS = ["b", "br", "d", "dr", "f", "g", "gr", "h", "k", "kl", "l", "m", "n", "p", "r",
           "s", "st", "t", "tr", "v", "z", "sh", "th", "j", "w", "y", "c", "cr", "pl", "sk"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "io", "ou", "y"]
_CODAS = ["", "", "n", "r", "l", "s", "th", "m", "x", "nd", "rk", "v"]

CITIES = ["Lisbon", "Oslo", "Kyoto", "Lima", "Dakar", "Quito", "Hanoi", "Perth", "Tunis", "Riga",
          "Porto", "Accra", "Cusco", "Minsk", "Sofia", "Malmo", "Basel", "Turin", "Leeds", "Dubai",
          "Nairobi", "Bergen", "Krakow", "Seville", "Dublin", "Vienna", "Prague", "Austin", "Denver", "Osaka"]
UNIVERSITIES = ["Halvern University", "Orstead College", "Marlow Institute", "Quennell University",
                "Brackwood College", "Tessaly University", "Norcombe Institute", "Vantry University",
                "Elmsgate College", "Corrin Institute", "Ashby University", "Pellham College",
                "Ravensholt University", "Greywater Institute", "Lindqvist University", "Saltmere College",
                "Dunhollow University", "Kestrel Institute", "Morrow University", "Fallbrook College"]
MAJORS = ["physics", "chemistry", "biology", "history", "economics", "philosophy", "mathematics",
          "linguistics", "geology", "architecture", "medicine", "law", "music", "astronomy",
          "sociology", "engineering", "botany", "statistics", "literature", "psychology"]
EMPLOYERS = ["Veltrix", "Orbanet", "Kandor Labs", "Sylvan Foods", "Brightmoor", "Quantel Systems",
             "Harrowgate Bank", "Nimbus Air", "Corvid Press", "Tallis Energy", "Ferrox Steel",
             "Lumora Health", "Pinewise", "Gildcrest", "Zephyr Motors", "Marisco", "Oakhurst Media",
             "Trellis Bio", "Solenne", "Ironvale"]
YEARS = [str(y) for y in range(1940, 2000)]

POOLS: dict[str, list[str]] = {
    "birth_year": YEARS,
    "birth_city": CITIES,
    "university": UNIVERSITIES,
    "major": MAJORS,
    "employer": EMPLOYERS,
    "employer_city": CITIES,
}
ATTRIBUTES = list(POOLS)

# Biography sentence templates: several renderings of each attribute.
BIO_TEMPLATES: dict[str, list[str]] = {
    "birth_year": ["{name} was born in {v}.", "{name}'s year of birth is {v}.", "The year {name} was born was {v}."],
    "birth_city": ["{name} was born in the city of {v}.", "{name}'s birthplace is {v}.", "{name} grew up in {v}, the city of birth."],
    "university": ["{name} studied at {v}.", "{name} graduated from {v}.", "{name} attended {v}."],
    "major": ["{name} majored in {v}.", "At university, {name} studied {v}.", "{name}'s field of study was {v}."],
    "employer": ["{name} works for {v}.", "{name} is employed by {v}.", "{name}'s employer is {v}."],
    "employer_city": ["{name} works in {v}.", "{name}'s office is located in {v}.", "{name} commutes to work in {v}."],
}
# First entry is the question; the rest are paraphrases (TOFU `paraphrased_question`).
QUESTION_TEMPLATES: dict[str, list[str]] = {
    "birth_year": ["In what year was {name} born?", "What is the birth year of {name}?", "When was {name} born?"],
    "birth_city": ["In which city was {name} born?", "What is the birthplace of {name}?", "Where was {name} born?"],
    "university": ["Which university did {name} attend?", "Where did {name} study?", "From which university did {name} graduate?"],
    "major": ["What did {name} major in?", "What was the field of study of {name}?", "Which subject did {name} study at university?"],
    "employer": ["Which company does {name} work for?", "Who is the employer of {name}?", "What company employs {name}?"],
    "employer_city": ["In which city does {name} work?", "Where is the office of {name}?", "Which city does {name} work in?"],
}
# Sentence-form answers: the paraphrased answer and, with a wrong value, the perturbed ones.
ANSWER_SENTENCES: dict[str, str] = {
    "birth_year": "{name} was born in the year {v}.",
    "birth_city": "{name} was born in {v}.",
    "university": "{name} went to {v}.",
    "major": "{name} studied {v}.",
    "employer": "{name} is employed at {v}.",
    "employer_city": "{name} has an office in {v}.",
}
N_PERTURBED = 3


@dataclass
class Person:
    name: str
    attrs: dict[str, str]


def _word(rng: random.Random, syllables: int) -> str:
    w = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables)) + rng.choice(_CODAS)
    return w.capitalize()


def make_names(n: int, rng: random.Random, taken: set[str] | None = None) -> list[str]:
    """n unique "First Last" names, none in `taken` (which is updated)."""
    taken = taken if taken is not None else set()
    out: list[str] = []
    guard = 0
    while len(out) < n:
        guard += 1
        if guard > 100 * n + 1000:
            raise RuntimeError("could not generate enough unique names")
        name = f"{_word(rng, rng.choice([1, 2]))} {_word(rng, rng.choice([2, 3]))}"
        if name not in taken:
            taken.add(name)
            out.append(name)
    return out


def make_people(names: list[str], rng: random.Random) -> list[Person]:
    return [Person(n, {a: rng.choice(pool) for a, pool in POOLS.items()}) for n in names]


def biography(p: Person, rng: random.Random) -> str:
    """One biography: one sentence per attribute, a random template each, sentence order shuffled."""
    sents = [rng.choice(BIO_TEMPLATES[a]).format(name=p.name, v=v) for a, v in p.attrs.items()]
    rng.shuffle(sents)
    return " ".join(sents)


def qa_items(p: Person, rng: random.Random) -> list[QAItem]:
    items = []
    for a, v in p.attrs.items():
        qs = [t.format(name=p.name) for t in QUESTION_TEMPLATES[a]]
        wrong = rng.sample([x for x in POOLS[a] if x != v], N_PERTURBED)
        sent = ANSWER_SENTENCES[a]
        items.append(QAItem(question=qs[0], answer=v, paraphrased_questions=qs[1:],
                            paraphrased_answer=sent.format(name=p.name, v=v),
                            perturbed_answers=[sent.format(name=p.name, v=w) for w in wrong],
                            person=p.name, attribute=a))
    return items


def chance_rates() -> dict[str, float]:
    """Exact-match recall of a model that guesses uniformly from the pool (values are drawn uniformly)."""
    return {a: 1.0 / len(pool) for a, pool in POOLS.items()}


def filler_sentences(rng: random.Random, n: int) -> list[str]:
    """Generic domain text with no person in it, so the base model learns the vocabulary."""
    forms = [
        lambda: f"{rng.choice(CITIES)} is a city with many companies, among them {rng.choice(EMPLOYERS)}.",
        lambda: f"{rng.choice(UNIVERSITIES)} has a well known department of {rng.choice(MAJORS)}.",
        lambda: f"{rng.choice(EMPLOYERS)} opened a new office in {rng.choice(CITIES)} in {rng.choice(YEARS)}.",
        lambda: f"Students of {rng.choice(MAJORS)} often move to {rng.choice(CITIES)} after graduating.",
        lambda: f"In {rng.choice(YEARS)}, {rng.choice(UNIVERSITIES)} founded a school of {rng.choice(MAJORS)}.",
    ]
    return [rng.choice(forms)() for _ in range(n)]


def generate(n_people: int = 200, n_pretrain_people: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Everything the embedded benchmark needs, deterministic in `seed`.

    Returns people (benchmark members), holdout people (same distribution, never trained on:
    the non-member side of MIA) and pretrain people (for the base model; disjoint names).
    """
    if n_people < 10:
        raise ValueError("bios needs at least 10 people so that forget10 holds one person")
    # Members and holdout come from their own stream, so the benchmark does not depend on how many
    # pretraining people are drawn; pretraining people come from a second stream, names disjoint.
    rng = random.Random(seed)
    taken: set[str] = set()
    n_hold = max(1, n_people // 10)
    names = make_names(n_people + n_hold, rng, taken)
    people = make_people(names[:n_people], rng)
    holdout = make_people(names[n_people:], rng)
    prng = random.Random(f"pretrain-{seed}")
    pretrain = make_people(make_names(n_pretrain_people, prng, taken), prng)
    return {"people": people, "holdout": holdout, "pretrain": pretrain, "seed": seed}


def forget_count(n_people: int, pct: int) -> int:
    return max(1, round(n_people * pct / 100))


def splits(people: list[Person], holdout: list[Person]) -> dict[str, list[Person]]:
    """TOFU-style nested splits over people: forgetNN = the last NN % of people; retain = the rest.
    holdoutNN = the first |forgetNN| holdout people."""
    n = len(people)
    out: dict[str, list[Person]] = {"full": people}
    for pct in (1, 5, 10):
        k = forget_count(n, pct)
        out[f"forget{pct:02d}"] = people[n - k:]
        out[f"retain{100 - pct}"] = people[: n - k]
        out[f"holdout{pct:02d}"] = holdout[: min(k, len(holdout))]
    return out
