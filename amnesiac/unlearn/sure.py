"""SURE (docs/science.md §1): saliency-based unlearning. For every trained weight tensor, the saliency of each row
(output unit; dim 0) is ‖∇_row L_forget‖₂, computed once on the whole forget set at θ_t. Only rows at or above
the P-th percentile are updated. (The authors' released code computes the mask but never applies it; we apply it.)

Rows: dim 0 of every trainable tensor (a Linear's output units, an embedding's tokens); a 1-D tensor
(norm weight, bias) has one-element rows. Threshold scope:
- "matrix" (default): the top ⌈(1 − P/100)·rows⌉ rows of each tensor, so every tensor keeps the same fraction;
- "global": the top ⌈(1 − P/100)·all rows⌉ over all tensors at once (row norms of differently shaped tensors
  are on different scales, so this concentrates updates where gradients are large).
Selection is an exact top-k (stable sort; ties by index), so the mask size equals the percentile exactly.

Masked rows must not move at all: their gradients are zeroed (so AdamW's moments for them stay exactly 0 and
the Adam update is exactly 0), and weight decay, which AdamW applies to every weight regardless of its
gradient, is taken out of the optimizer and applied here to selected rows only.
"""
from __future__ import annotations

import math

import torch

from .common import Ctx, Method


def row_norms(g: torch.Tensor) -> torch.Tensor:
    """(rows,) ‖g_row‖₂; a 1-D tensor's rows are its elements."""
    g = g.float()
    return g.abs() if g.dim() == 1 else g.reshape(g.shape[0], -1).norm(dim=1)


def top_rows(scores: torch.Tensor, frac: float) -> torch.Tensor:
    """Bool mask of the ⌈frac·n⌉ (≥ 1) highest scores, stable on ties."""
    n = scores.numel()
    k = min(n, max(1, math.ceil(frac * n - 1e-9)))
    order = torch.sort(scores, descending=True, stable=True).indices
    mask = torch.zeros(n, dtype=torch.bool)
    mask[order[:k]] = True
    return mask


def saliency(ctx: Ctx, method: Method, params: dict[str, torch.nn.Parameter], batch_size: int) -> dict[str, torch.Tensor]:
    """Row norms of ∇L_forget accumulated over the whole forget set (each batch weighted by its size)."""
    model = ctx.model
    was = model.training
    model.eval()  # no dropout while measuring
    for p in params.values():
        p.grad = None
    n = len(ctx.data["forget"])
    for s in range(0, n, batch_size):
        idx = list(range(s, min(s + batch_size, n)))
        with ctx.autocast():
            loss = method.forget_loss(ctx, idx) * (len(idx) / n)
        loss.backward()
    out = {}
    for name, p in params.items():
        out[name] = row_norms(p.grad).cpu() if p.grad is not None else torch.zeros(p.shape[0])
        p.grad = None
    model.train(was)
    return out


def build_masks(sal: dict[str, torch.Tensor], percentile: float, scope: str = "matrix"):
    """→ (masks {name: (rows,) bool}, stats for unlearn.json)."""
    if not 0 <= percentile < 100:
        raise ValueError(f"sure_percentile must be in [0, 100), got {percentile}")
    frac = 1 - percentile / 100
    if scope == "matrix":
        masks = {n: top_rows(s, frac) for n, s in sal.items()}
    elif scope == "global":
        names = list(sal)
        flat = top_rows(torch.cat([sal[n] for n in names]), frac)
        masks = dict(zip(names, flat.split([sal[n].numel() for n in names])))
    else:
        raise ValueError(f"unknown sure_scope {scope!r}; available: matrix, global")
    total = sum(m.numel() for m in masks.values())
    sel = sum(int(m.sum()) for m in masks.values())
    stats = {
        "percentile": percentile, "scope": scope, "rows_total": total, "rows_selected": sel,
        "fraction_selected": sel / max(total, 1),
        "zero_saliency_selected": sum(int((sal[n][m] == 0).sum()) for n, m in masks.items()),
        "per_tensor": {n: {"rows": m.numel(), "selected": int(m.sum()),
                           "threshold": float(sal[n][m].min()) if m.any() else None} for n, m in masks.items()},
    }
    return masks, stats


def _local(t: torch.Tensor) -> torch.Tensor:
    """The tensor this process holds: under FSDP a DTensor's local row shard (the masks are sliced to match)."""
    return t.to_local() if hasattr(t, "to_local") else t


def _rows(mask: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """(rows, 1, …) float view of a row mask that broadcasts against p."""
    return mask.to(device=p.device, dtype=p.dtype).view(-1, *([1] * (p.dim() - 1)))


def mask_grads(params: dict[str, torch.nn.Parameter], masks: dict[str, torch.Tensor]) -> None:
    for name, p in params.items():
        if p.grad is not None:
            g = _local(p.grad)
            g.mul_(_rows(masks[name], g))


def masked_weight_decay(params: dict[str, torch.nn.Parameter], masks: dict[str, torch.Tensor], lr: float,
                        weight_decay: dict[str, float]) -> None:
    """AdamW's decoupled decay θ ← θ·(1 − lr·λ), applied before optimizer.step() (as torch.optim.AdamW does
    inside step) and only on selected rows: unselected rows are multiplied by exactly 1."""
    with torch.no_grad():
        for name, p in params.items():
            wd = weight_decay.get(name, 0.0)
            if wd:
                w = _local(p)
                w.mul_(1 - _rows(masks[name], w) * (lr * wd))
