"""Measuring SmolLM2 as deployed, through the one measuring layer (measure.py, runs.cached_measure).

PRECISIONS are deployments of the one quantizer vocabulary (attacks/quant/spec.py): full precision, the
release format Q4_1 (Linear only), the whole GGUF file as shipped (`q4_1_file`: + the tied embedding at
Q8_0), other GGUF formats, RTN and HQQ. The facts are completion prompts, so the data's scoring is
`fact` (the greedy completion starts with an accepted answer, data.facts.fact_correct) — what decides
"the model knows the fact" — plus the forget answer probability P(a|q)^(1/|a|).
"""
from __future__ import annotations

from pathlib import Path

RELEASE = "q4_1"
PRECISIONS = ("fp", "q4_1", "q4_1_file", "q4_0", "q8_0", "rtn8", "rtn4_g128_asym", "hqq4")


def scoring():
    from ..measure import Scoring

    return Scoring("fact", "completion facts: the greedy completion must start with an accepted answer")


def quantizer(name: str):
    from ..attacks.quant.spec import quantizer_from_name

    return quantizer_from_name(name)


def flat(r: dict) -> dict:
    """measure()'s nested result in this protocol's flat form: <set>_correct, forget_prob, forget_outputs."""
    out = {f"{s}_correct": d["fact"] for s, d in r.items()}
    if "forget" in r:
        out["forget_prob"] = r["forget"]["prob"]
        if "outputs" in r["forget"]:
            out["forget_outputs"] = r["forget"]["outputs"]
    return out


def measure(model, tok, sets: dict[str, list], precision: str = "fp", batch_size: int = 64) -> dict:
    """Per item of each set: correct (greedy completion, `fact_correct`), plus the forget answer probability,
    of `model` deployed at `precision` (a quantized copy; the model is untouched)."""
    from ..attacks.quant.deploy import deploy
    from ..measure import measure as measure_

    return flat(measure_(deploy(model, tok, precision)[0], tok, {k: v for k, v in sets.items() if v}, scoring(),
                         batch_size=batch_size))


def cached_measure(cache: Path, model_path, model_fn, tok, sets, precision: str, batch_size: int, log=None,
                   calib_texts: list[str] | None = None) -> dict:
    """measure() of one (model, precision), cached by the model's content (runs.cached_measure). A calibrated
    precision (gptq*, awq*) calibrates on `calib_texts` (the protocol passes the retain facts)."""
    from ..attacks.quant.spec import is_calibrated
    from ..runs import cached_measure as cached

    calibrated = precision != "fp" and is_calibrated(precision)
    if calibrated and not calib_texts:
        raise ValueError(f"{precision} needs calibration texts")
    return flat(cached(model_path, precision, {k: v for k, v in sets.items() if v}, scoring(), Path(cache) / "eval",
                       loaded=lambda: (model_fn(), tok), batch_size=batch_size,
                       log=(lambda m: log(f"smollm2: {m}")) if log else None,
                       calib_texts=calib_texts if calibrated else None))


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
