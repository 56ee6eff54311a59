"""Named data sources: `bios:<split>`, `tofu:<split>`, or a path to a JSONL file."""
from __future__ import annotations

import os
import random
import re
from pathlib import Path

from ..io import amnesiac_home, hash_obj, write_json, write_jsonl
from ..registry import register
from . import bios
from .schema import DataError, QAItem, load_qa_jsonl, load_text_jsonl

BIOS_DEFAULT = {"n_people": 50, "n_pretrain_people": 1000, "seed": 0}  # = the xs tiny models' benchmark
BIOS_SPLITS = ["full", "forget01", "forget05", "forget10", "retain99", "retain95", "retain90",
               "holdout01", "holdout05", "holdout10"]
TOFU_SPLITS = ["full", "forget01", "forget05", "forget10", "retain99", "retain95", "retain90", "retain",
               "holdout01", "holdout05", "holdout10", "real_authors", "world_facts"]


def bios_dir(cfg: dict | None = None) -> Path:
    cfg = {**BIOS_DEFAULT, **(cfg or {})}
    return amnesiac_home() / "data" / f"bios-{hash_obj(cfg, 10)}"


def build_bios(cfg: dict | None = None, out: Path | None = None) -> Path:
    """Write the bios benchmark as TOFU-schema JSONL (+ `<split>_text.jsonl` biographies). Idempotent."""
    cfg = {**BIOS_DEFAULT, **(cfg or {})}
    out = Path(out) if out else bios_dir(cfg)
    if (out / "DONE").exists():
        return out
    g = bios.generate(**cfg)
    rng = random.Random(cfg["seed"] + 1)
    qa = {p.name: bios.qa_items(p, rng) for p in g["people"] + g["holdout"]}
    text = {p.name: bios.biography(p, rng) for p in g["people"] + g["holdout"]}
    for split, people in bios.splits(g["people"], g["holdout"]).items():
        write_jsonl(out / f"{split}.jsonl", [it.to_json() for p in people for it in qa[p.name]])
        write_jsonl(out / f"{split}_text.jsonl", [{"text": text[p.name], "person": p.name} for p in people])
    write_json(out / "config.json", {**cfg, "chance_rates": bios.chance_rates(), "attributes": bios.ATTRIBUTES})
    (out / "DONE").write_text("ok\n")
    return out


TOFU_PACKAGED = Path(__file__).resolve().parent / "tofu"  # the copy shipped in the package (MIT, see its README)


def tofu_dir() -> Path:
    """The TOFU copy: $AMNESIAC_TOFU_DIR when set, else the one shipped inside the package."""
    env = os.environ.get("AMNESIAC_TOFU_DIR")
    if env:
        d = Path(env)
        if not d.is_dir():
            raise DataError(f"AMNESIAC_TOFU_DIR={env}: no such folder; unset it to use the TOFU copy shipped with amnesiac")
        return d
    return TOFU_PACKAGED


def _tofu_file(split: str) -> Path:
    if split not in TOFU_SPLITS:
        raise DataError(f"unknown TOFU split {split!r}; available: {', '.join(TOFU_SPLITS)}")
    d = tofu_dir()
    name = {"retain": "retain_perturbed"}.get(split, split)
    # The *_perturbed files carry paraphrased/perturbed answers (same rows, same order), prefer them;
    # a user's folder may hold plain .jsonl, the package holds .jsonl.gz.
    for stem in (f"{name}_perturbed", name):
        for ext in (".jsonl", ".jsonl.gz"):
            if (d / f"{stem}{ext}").exists():
                return d / f"{stem}{ext}"
    raise DataError(f"TOFU split {split!r} not found in {d} (expected {name}.jsonl or {name}.jsonl.gz)")


@register("datasets", "bios")
def bios_source(split: str) -> list[QAItem]:
    """Embedded synthetic biographies (fictitious people; TOFU schema)."""
    kind = "text" if split.endswith("_text") else "qa"
    base = split[:-5] if kind == "text" else split
    if base not in BIOS_SPLITS:
        raise DataError(f"unknown bios split {split!r}; available: {', '.join(BIOS_SPLITS)} (append _text for biographies)")
    return load_qa_jsonl(build_bios() / f"{split}.jsonl") if kind == "qa" else load_text_jsonl(build_bios() / f"{split}.jsonl")


@register("datasets", "tofu")
def tofu_source(split: str) -> list[QAItem]:
    """TOFU (Maini et al. 2024), the real benchmark, shipped with the package (MIT)."""
    return load_qa_jsonl(_tofu_file(split))


_SLICE = re.compile(r"^(?P<spec>.+)\[(?P<start>\d*):(?P<stop>\d*)\]$")


def load_dataset(spec: str):
    """`bios:forget10`, `tofu:retain90`, or a path (`.jsonl` QA; raw text when the records have `text`).

    A trailing `[start:stop]` takes a slice of the records in file order, as Hugging Face `datasets` split
    slicing does (`tofu:forget01[:4]`: the first four), for a quick trial of a long run."""
    m = _SLICE.match(str(spec))
    if m and not Path(spec).exists():
        rows = load_dataset(m["spec"])
        start, stop = int(m["start"] or 0), int(m["stop"]) if m["stop"] else None
        part = rows[start:stop]
        if not part:
            raise DataError(f"{spec}: the slice [{m['start']}:{m['stop']}] of {m['spec']} ({len(rows)} records) is empty")
        return part
    from ..registry import registry

    if ":" in spec and not Path(spec).exists():
        name, split = spec.split(":", 1)
        table = registry("datasets")
        if name.lower() not in table:
            raise DataError(f"unknown data source {name!r}; available: {', '.join(sorted(table))}, or a path to a .jsonl file")
        return table[name.lower()](split)
    p = Path(spec)
    from .schema import read_jsonl

    rows = read_jsonl(p)
    if "text" in rows[0] and "question" not in rows[0]:
        return load_text_jsonl(p)
    return load_qa_jsonl(p)
