"""Collapse diagnostic: does quantization map the unlearned model back onto the target? (docs/science.md §1b)

For a target θ_t and an unlearned θ_u, under one quantizer Q with integer codes (RTN, or any object
whose `quantize(w)` returns a QTensor-like with codes_flat / step_flat / zero_flat / dequantize):
- collapse rate      = P[codes(w_u) == codes(w_t)], per layer and overall (weight-count weighted).
  Also `value_identical`: P[Q(w_u) == Q(w_t)] on dequantized values — lower when the group's scale
  itself moved (a changed absmax), even though the integer codes match.
- drift kept         = ⟨Q(w_u) − Q(w_t), w_u − w_t⟩ / ‖w_u − w_t‖²; ≈ 1 when rounding carries the
  unlearning update on average, ≈ 0 when it erases it. Overall = ratio of the summed terms.
- |Δw|/Δ histogram   = |w_u − w_t| in units of the target's step Δ of that weight.
- grid offset        = |w_t/Δ + z − round(w_t/Δ + z)| ∈ [0, 0.5], in steps: uniform (mean 0.25) for a
  normally trained target, piled at 0 for one from a quantized release.
- where the update went (docs/science.md §1c): the share of weights changed at all; of the changed weights and
  of the update's L1 mass ‖w_u − w_t‖₁, the share in the grid's zero bin (weights whose target code
  dequantizes to 0, |w_t| < Δ/2 on a symmetric grid, where re-quantizing erases any sub-step move); and the
  histogram of |w_t|/Δ over the changed weights. A model unlearned in bfloat16 is compared with its target
  cast to bfloat16 (`target_dtype`): the cast alone changes almost every weight.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .quant.apply import select_weights

RATIO_EDGES = [0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, math.inf]
TARGET_EDGES = [0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 4.0, 8.0, math.inf]  # |w_t|/Δ bins of the changed weights


def _hist(x: torch.Tensor, edges: list[float]) -> list[int]:
    inner = torch.tensor(edges[1:-1], dtype=x.dtype, device=x.device)  # bin i = [edge i, edge i+1)
    return torch.bucketize(x, inner, right=True).bincount(minlength=len(edges) - 1).tolist()


def _layer_stats(q, w_t: torch.Tensor, w_u: torch.Tensor, qt_t=None, offset_bins: int = 10, qt_u=None) -> dict:
    w_t, w_u = w_t.detach().float(), w_u.detach().float()
    qt_t = qt_t if qt_t is not None else q.quantize(w_t)
    qt_u = qt_u if qt_u is not None else q.quantize(w_u)
    n = w_t.numel()
    same = (qt_t.codes_flat() == qt_u.codes_flat()).sum().item()
    dq_t, dq_u = qt_t.dequantize(), qt_u.dequantize()
    ident = (dq_t == dq_u).sum().item()
    d = (w_u - w_t).double()
    dq = (dq_u - dq_t).double()
    step = qt_t.step_flat()
    ratio = ((w_u - w_t).abs() / step).flatten()
    ratio_hist = _hist(ratio, RATIO_EDGES)
    moved = (d != 0).flatten()
    zero = (dq_t == 0).flatten()  # the zero bin: the target's code dequantizes to 0
    l1 = d.abs().flatten()
    pos = w_t / step + qt_t.zero_flat()
    off = (pos - torch.round(pos)).abs().flatten()
    off_hist = torch.clamp((off / 0.5 * offset_bins).long(), max=offset_bins - 1).bincount(minlength=offset_bins)
    num, den = float((dq * d).sum()), float((d * d).sum())
    return {"n": n, "codes_equal": same, "values_equal": ident, "changed": int(moved.sum()),
            "zero_bin": int(zero.sum()), "changed_zero_bin": int((moved & zero).sum()), "l1": float(l1.sum()),
            "l1_zero_bin": float(l1[zero].sum()),
            "target_hist_changed": _hist((w_t.abs() / step).flatten()[moved], TARGET_EDGES),
            "dot": num, "sq": den, "ratio_sum": float(ratio.double().sum()), "ratio_max": float(ratio.max()),
            "ratio_ge_half": int((ratio >= 0.5).sum()), "ratio_hist": ratio_hist,
            "offset_sum": float(off.double().sum()), "offset_hist": off_hist.tolist()}


def _finish(s: dict) -> dict:
    n = max(s["n"], 1)
    return {"n_weights": s["n"], "collapse_rate": s["codes_equal"] / n, "value_identical": s["values_equal"] / n,
            "changed_fraction": s["changed"] / n, "zero_bin_fraction": s["zero_bin"] / n,
            # undefined (None) when nothing moved
            "changed_in_zero_bin": s["changed_zero_bin"] / s["changed"] if s["changed"] else None,
            "update_l1_in_zero_bin": s["l1_zero_bin"] / s["l1"] if s["l1"] > 0 else None,
            "target_over_step_changed_hist": s["target_hist_changed"],
            "drift_kept": s["dot"] / s["sq"] if s["sq"] > 0 else None,  # undefined when nothing moved
            "mean_abs_dw_over_step": s["ratio_sum"] / n, "max_abs_dw_over_step": s["ratio_max"],
            "frac_dw_ge_half_step": s["ratio_ge_half"] / n, "dw_over_step_hist": s["ratio_hist"],
            "grid_offset_mean": s["offset_sum"] / n, "grid_offset_hist": s["offset_hist"]}


@torch.no_grad()
def collapse_diagnostics(target, unlearned, quantizer, linear: bool = True, embeddings: bool = False,
                         lm_head: bool = False, include: str | None = None, exclude: str | None = None,
                         offset_bins: int = 10, cache: dict | None = None,
                         target_dtype: torch.dtype | None = None) -> dict:
    """Per-layer and overall collapse diagnostics of `unlearned` vs `target` under `quantizer`.

    Weights are matched by name; same module selection as quantize_model. `cache` (a dict the caller
    keeps) stores the target's QTensors per (layer, quantizer), so auditing several unlearned models
    against one target quantizes it once. `target_dtype`: compare with the target cast to this dtype (and back to
    float32), e.g. torch.bfloat16 for a model unlearned in pure bfloat16."""
    if not hasattr(quantizer, "quantize"):
        raise TypeError(f"{type(quantizer).__name__} exposes no integer codes (.quantize); the collapse "
                        "diagnostic needs one (RTN, or a GGUF format)")
    u_params = dict(select_weights(unlearned, linear, embeddings, lm_head, include, exclude))
    qname = getattr(quantizer, "name", repr(quantizer))
    per = quantizer.bind(target) if hasattr(quantizer, "bind") else None  # a per-tensor mix (Q4_K_M)
    raw = {}
    for name, w_t in select_weights(target, linear, embeddings, lm_head, include, exclude):
        if name not in u_params:
            raise KeyError(f"unlearned model has no weight {name!r} (or it is not selected): not the same "
                           "architecture as the target")
        w_u = u_params[name]
        if w_u.shape != w_t.shape:
            raise ValueError(f"{name}: shapes differ ({tuple(w_t.shape)} vs {tuple(w_u.shape)})")
        key = (name, qname, w_t.data_ptr(), w_t._version, target_dtype)  # before the cast: a fresh tensor's
        if target_dtype is not None:  # address may be reused
            w_t = w_t.detach().to(target_dtype)
        qt_t = cache.get(key) if cache is not None else None
        q = per[name] if per is not None else quantizer
        if qt_t is None:
            qt_t = q.quantize(w_t.detach().float())
            if cache is not None:
                cache[key] = qt_t
        raw[name] = _layer_stats(q, w_t, w_u.to(w_t.device), qt_t, offset_bins)
    cfg = quantizer.config() if hasattr(quantizer, "config") else {"name": qname}
    return _report(raw, {**cfg, "name": qname}, offset_bins)


def _report(raw: dict[str, dict], quantizer: dict, offset_bins: int) -> dict:
    """Per-layer and overall (summed) statistics from each layer's raw sums."""
    layers, tot = {}, None
    for name, s in raw.items():
        layers[name] = _finish(s)
        if tot is None:
            tot = {k: (list(v) if isinstance(v, list) else v) for k, v in s.items()}
        else:
            for k, v in s.items():
                if isinstance(v, list):
                    tot[k] = [a + b for a, b in zip(tot[k], v)]
                elif k == "ratio_max":
                    tot[k] = max(tot[k], v)
                else:
                    tot[k] += v
    if tot is None:
        raise ValueError("no weights matched the module selection")
    return {"quantizer": quantizer, "overall": _finish(tot), "layers": layers,
            "dw_over_step_edges": RATIO_EDGES[:-1] + ["inf"],  # JSON has no infinity
            "target_over_step_edges": TARGET_EDGES[:-1] + ["inf"],
            "grid_offset_edges": np.linspace(0, 0.5, offset_bins + 1).round(4).tolist()}


@torch.no_grad()
def collapse_from_codes(target, unlearned, codes_t: dict, codes_u: dict, name: str = "calibrated",
                        offset_bins: int = 10) -> dict:
    """The same diagnostics when each model was quantized by a calibrated method, whose codes depend on
    the model's own activations: codes_t / codes_u are deploy(...)[1]["codes"] of target and unlearned
    ({weight name: QTensor}). Meaningful as is for GPTQ (codes of W itself); AWQ's codes are of W·diag(s)
    with s found per model, so its |Δw|/Δ and grid offset mix two scalings (collapse rate stays defined)."""
    p_t, p_u = dict(target.named_parameters()), dict(unlearned.named_parameters())
    raw = {}
    for n, qt_t in codes_t.items():
        if n not in codes_u or n not in p_t or n not in p_u:
            raise KeyError(f"{n}: not in both models and both code sets (same architecture and quantizer?)")
        raw[n] = _layer_stats(None, p_t[n], p_u[n].to(p_t[n].device), qt_t, offset_bins, codes_u[n])
    return _report(raw, {"name": name}, offset_bins)


from ..registry import register  # noqa: E402  (kept next to its only user)


@register("attacks", "collapse")
def collapse_attack(model, tok=None, target=None, bits: int = 4, group: int | None = None, scheme: str = "sym",
                    quantizer=None, **select):
    """Collapse diagnostic (measures, returns no model): collapse rate, drift kept, |Δw|/Δ, grid offset."""
    from .base import AttackResult, measure_cost
    from .quant.rtn import RTN

    if target is None:
        raise ValueError("collapse needs target=<the model before unlearning>")
    q = quantizer or RTN(bits, group, scheme)
    with measure_cost() as cost:
        rep = collapse_diagnostics(target, model, q, **select)
    return AttackResult(None, {"attack": "collapse", "config": {**rep["quantizer"], **select}, "cost": cost, **rep})
