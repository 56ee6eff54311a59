"""Measuring one model as deployed (used by smollm2.py and smollm2_sweep.py).

PRECISIONS are the deployments audited: full precision, the release format Q4_1 (Linear only, and the
whole file as shipped: + the tied embedding at Q8_0), other GGUF formats, RTN, and HQQ. measure() scores
greedy completions with data.facts.fact_correct (accepted answers at the start of the output), which is
what decides "the model knows the fact" for these completion prompts (audit.knowledge's exact match of
a whole first line does not fit them), and the forget answer probability P(a|q)^(1/|a|).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..io import hash_obj, read_json, write_json

RELEASE = "q4_1"
PRECISIONS = {  # name -> attacks.quant.backends.get_quantizer kwargs (None = full precision)
    "fp": None,
    "q4_1": dict(backend="gguf", kind="q4_1"),  # the release format: re-quantize to what was shipped
    # the whole file as shipped (and as gguf_io.write_gguf(ftype="q4_1") writes it): Linear Q4_1, the (tied)
    # token embedding Q8_0, norms F32 — "q4_1" alone leaves the embedding at full precision
    "gguf_q4_1": dict(backend="gguf", kind="q4_1", embed="q8_0"),
    "q4_0": dict(backend="gguf", kind="q4_0"),
    "q8_0": dict(backend="gguf", kind="q8_0"),
    "rtn8": dict(backend="rtn", bits=8, group=None, scheme="sym"),  # per output channel
    "rtn4_g128": dict(backend="rtn", bits=4, group=128, scheme="asym"),
    "hqq4": dict(backend="hqq", bits=4, group=64),  # a real library's quantize→dequantize
}
MEASURE_VERSION = 2  # bump when measure() changes what it records (invalidates cached evaluations)


def quantizer(name: str):
    from ..attacks.quant.backends import get_quantizer

    return get_quantizer(**{k: v for k, v in PRECISIONS[name].items() if k != "embed"})


def deploy(model, precision: str):
    """A copy of `model` as deployed at `precision` (Linear weights; the embedding too for gguf_q4_1)."""
    from ..attacks.quant.apply import quantize_model
    from ..attacks.quant.backends import get_quantizer

    m = quantize_model(model, quantizer(precision))[0]
    emb = PRECISIONS[precision].get("embed")
    if emb:
        quantize_model(m, get_quantizer(backend="gguf", kind=emb), inplace=True, linear=False, embeddings=True)
    return m


def max_new_tokens(tok, items) -> int:
    """Room for the longest accepted answer + 2 tokens (a space, an article), as known_facts uses."""
    from ..data.facts import accepted

    return 2 + max(len(tok(" " + a, add_special_tokens=False)["input_ids"]) for it in items for a in accepted(it))


def greedy_by_length(model, tok, items, batch_size: int = 64, new_tokens: int | None = None) -> list[str]:
    """Greedy completions, each item given max_new_tokens(its own answers): items are generated in groups
    of equal need. fact_correct accepts an answer only at the start of the output (after at most an
    article), so tokens past the item's own need do not decide it. Measured on SmolLM2 (91 items, 2-core
    CPU): same answers as one call at the longest need, and no faster (prefill, the answer-probability
    pass and the quantized copy dominate), so this buys only the per-item definition."""
    from ..core import generate_greedy
    from ..data.schema import item_prompt

    need = [new_tokens or max_new_tokens(tok, [it]) for it in items]
    outs: list[str] = [""] * len(items)
    for n in sorted(set(need)):
        idx = [i for i, k in enumerate(need) if k == n]
        for i, o in zip(idx, generate_greedy(model, tok, [item_prompt(items[i]) for i in idx], max_new_tokens=n,
                                             batch_size=batch_size)):
            outs[i] = o
    return outs


def measure(model, tok, sets: dict[str, list], precision: str | None = "fp", batch_size: int = 64,
            new_tokens: int | None = None) -> dict:
    """Per item of each set: correct (greedy completion, `fact_correct`), plus the forget answer
    probability P(a|q)^(1/|a|), of `model` deployed at `precision` (quantized copy; model untouched)."""
    from ..core import score_pairs
    from ..data.facts import fact_correct
    from ..data.schema import item_prompt, qa_answer

    if precision not in (None, "fp"):
        model = deploy(model, precision)
    was = model.training
    model.eval()
    names = [s for s in ("forget", "retain", "utility") if sets.get(s)]
    items = [it for s in names for it in sets[s]]
    outs = greedy_by_length(model, tok, items, batch_size, new_tokens)
    res, i = {}, 0
    for s in names:
        k = len(sets[s])
        res[f"{s}_correct"] = [float(fact_correct(o, it)) for o, it in zip(outs[i:i + k], sets[s])]
        if s == "forget":
            res["forget_outputs"] = outs[i:i + k]
        i += k
    fg = sets.get("forget") or []
    if fg:
        sc = score_pairs(model, tok, [item_prompt(it) for it in fg], [qa_answer(it.answer) for it in fg],
                         batch_size=batch_size)
        res["forget_prob"] = np.exp(sc.mean).round(6).tolist()
    model.train(was)
    return res


def eval_path(cache: Path, mid: dict, precision: str, sets: dict) -> Path:
    key = hash_obj({"model": mid, "precision": PRECISIONS[precision], "v": MEASURE_VERSION,
                    "sets": {s: [it.question for it in v] for s, v in sets.items()}})
    return cache / "eval" / f"{precision}-{key}.json"


def cached_measure(cache: Path, mid: dict, model_fn, tok, sets, precision: str, batch_size: int, log=None) -> dict:
    """measure() of one (model, precision), read from / written to cache (a killed run resumes here)."""
    cp = eval_path(cache, mid, precision, sets)
    if cp.exists():
        return read_json(cp)
    t = time.time()
    if log:
        log(f"smollm2: measuring {mid['path']} @ {precision}")
    r = measure(model_fn(), tok, sets, precision, batch_size)
    r["wall_s"] = round(time.time() - t, 1)
    write_json(cp, r)
    return r


def collapse_vs(target, model, cache: dict | None = None, per_layer: bool = True) -> dict:
    """Collapse diagnostics of `model` vs the target under the release format (docs/science.md §1b)."""
    from ..attacks.collapse import collapse_diagnostics

    d = collapse_diagnostics(target, model, quantizer(RELEASE), cache=cache)
    keep = ("collapse_rate", "value_identical", "changed_fraction", "drift_kept", "mean_abs_dw_over_step",
            "frac_dw_ge_half_step", "max_abs_dw_over_step", "grid_offset_mean", "dw_over_step_hist")
    out = {k: d["overall"][k] for k in keep}
    if per_layer:
        out["per_layer"] = {k: v["collapse_rate"] for k, v in d["layers"].items()}
    return out
