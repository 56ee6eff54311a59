"""The demo's two scenarios (docs/science.md §1b) and its deployment columns, shared by every experiment
that uses them (demo, reproduce tofu, sweeps): one definition, no experiment importing another.

- `trained`: the target as fine-tuned;
- `released-quantized`: the target's Linear weights rounded onto the 4-bit release grid first, as if it
  came from a quantized release (written once next to the original, keyed by its content).
"""
from __future__ import annotations

from pathlib import Path

from .io import content_key, read_json, write_json

RELEASE_GRID = "rtn4_g64"  # the 4-bit release grid (symmetric, group 64), a name of attacks/quant/spec.py
PRECISIONS = {  # column label -> deployment (a quantizer name of the one vocabulary, or "fp")
    "fp": "fp",
    "8bit": "rtn8",
    "4bit": RELEASE_GRID,
    "3bit": "rtn3_g64",
    "4bit_foreign": "rtn4_g128_asym",
}
# calibrated deployments (GPTQ, AWQ at group 128, as their reference libraries default), calibrated on the
# retain set: the seed paper's 4-bit quantizers and their 8-bit counterparts, for a table RTN / GPTQ / AWQ × 4 / 8
CALIBRATED = {
    "gptq4": "gptq4_g128",
    "awq4": "awq4_g128",
    "gptq8": "gptq8_g128",
    "awq8": "awq8_g128",
    # GPTQ at the release's group size (64): rules group size in or out as the reason GPTQ g128 recovers nothing.
    # Not the release grid itself: GPTQ's symmetric grid has Δ = 2·max|w|/15 (zero point 8), the release's
    # Δ = max|w|/7 (RTN sym), and GPTQ reads each group's grid off the error-updated weights
    "gptq4_g64": "gptq4_g64",
}
SCENARIOS = ("trained", "released-quantized")


def _quantizer(name: str):
    from .attacks.quant.spec import quantizer_from_name

    return quantizer_from_name(name)


def scenario_models(paths: dict[str, Path], scenario: str, log=print) -> dict[str, Path]:
    """target and retrained for a scenario; released-quantized ones are written once next to the originals."""
    if scenario == "trained":
        return {"target": paths["target"], "retrained": paths["retrained"]}
    if scenario != "released-quantized":
        raise ValueError(f"unknown scenario {scenario!r}; available: trained, released-quantized")
    from .attacks.quant.apply import released_quantized
    from .models import load_model, save_model

    out = {}
    for name in ("target", "retrained"):
        dst = paths[name].parent / f"{name}-released-q4g64"
        released = dst / "released.json"
        if not released.exists() or read_json(released).get("source_key") != content_key(paths[name]):
            log(f"[demo] rounding {name} onto the 4-bit g64 grid (released-quantized scenario)")
            m, tok = load_model(paths[name], device="cpu")
            save_model(released_quantized(m, _quantizer(RELEASE_GRID)), tok, dst)
            write_json(dst / "released.json", {"source": str(paths[name]), "grid": RELEASE_GRID,
                                               "source_key": content_key(paths[name])})
        out[name] = dst
    return out
