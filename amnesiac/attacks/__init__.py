"""Attacks: every cheap way to bring unlearned knowledge back (docs/science.md §3, §4), and the collapse
diagnostic (§1b). Importing this package registers them (`amnesiac ls attacks`); optional quantization
libraries are imported only when their backend is used."""
from . import collapse, probes, prompts, quantize, relearn  # noqa: F401  (register)
from .base import AttackResult, apply_attack, measure_cost
from .collapse import collapse_diagnostics
from .probes import linear_probe, logit_lens
from .prompts import TRANSFORMS, build_prompts, prompt_recall
from .quant import RTN, get_quantizer, quantize_model, released_quantized
from .quantize import quantize_attack
from .relearn import finetune, relearn_attack, split_forget

__all__ = ["RTN", "TRANSFORMS", "AttackResult", "apply_attack", "build_prompts", "collapse_diagnostics", "finetune",
           "get_quantizer", "linear_probe", "logit_lens", "measure_cost", "prompt_recall", "quantize_attack",
           "quantize_model", "relearn_attack", "released_quantized", "split_forget"]
