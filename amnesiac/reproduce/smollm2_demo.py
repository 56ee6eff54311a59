"""`amnesiac demo --smollm2`: the SmolLM2 rows (scenario "smollm2-q4_1-release") appended to the demo.

They come from `amnesiac reproduce smollm2` with its default recipe (cached per piece under
$AMNESIAC_HOME/cache/smollm2; the protocol runs, without its sweep, when they are missing). The
demo's columns map onto this protocol's precisions: fp → fp, 8bit → RTN 8-bit per channel (the same
quantizer), 4bit → Q4_1 (the release grid, as the demo's 4bit is the released-quantized grid),
4bit_foreign → RTN 4-bit g128 asymmetric (the same quantizer); 3bit has no counterpart here; Q4_0,
Q8_0 and HQQ rows keep their own names. No retrained model exists, so the verdict uses the unlearned
model's own full-precision recall as the floor (smollm2.verdict).
"""
from __future__ import annotations

from pathlib import Path

from .smollm2 import SCENARIO

TO_DEMO = {"fp": "fp", "rtn8": "8bit", "q4_1": "4bit", "rtn4_g128_asym": "4bit_foreign"}


def demo_rows(summary: dict) -> list[dict]:
    """This protocol's rows with the demo's precision names (original name kept as `quantizer`)."""
    out = []
    for r in summary["rows"]:
        d = {**r, "precision": TO_DEMO.get(r["precision"], r["precision"]), "quantizer": r["precision"]}
        d["mean_abs_dw_over_4bit_step"] = r.get("mean_abs_dw_over_step")
        out.append(d)
    return out


def add_to_demo(summary: dict, out: str | Path, log=print) -> dict:
    """Append the SmolLM2 rows, verdict and scenario to a demo summary (in place; returns it)."""
    from .smollm2 import SmolConfig, run_smollm2

    s = run_smollm2(SmolConfig(sweep=False), Path(out) / "smollm2", log=log)
    summary["rows"] = summary["rows"] + demo_rows(s)
    summary["verdicts"] = {**summary["verdicts"], SCENARIO: s["verdict"]}
    summary["config"] = {**summary["config"], "scenarios": [*summary["config"]["scenarios"], SCENARIO]}
    summary["smollm2"] = {"summary": str(Path(out) / "smollm2" / "summary.json"), "wall_s": s["wall_s"],
                          "model": s["model"], "precision_map": TO_DEMO, "verdict_floor": "unlearned@fp"}
    return summary
