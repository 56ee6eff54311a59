"""GA: gradient ascent on the forget NLL (docs/science.md §2: loss = −CE(θ; F))."""
from __future__ import annotations

import torch

from ..registry import register
from .common import Ctx, Method, forward


def ga_loss(lp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """−CE over the batch's scored tokens = mean token log-prob (the token mean TOFU's GA uses).

    lp, mask: (B, T-1); lp is already 0 outside the mask."""
    return lp.sum() / mask.sum().clamp_min(1)


@register("unlearn_methods", "ga")
class GA(Method):
    """Gradient ascent: maximise the forget set's NLL (unbounded; pair it with GDR/KLR)."""
    name = "ga"

    def forget_loss(self, ctx: Ctx, idx: list[int]) -> torch.Tensor:
        f = forward(ctx.model, ctx.data["forget"].encode(idx, ctx.device))
        return ga_loss(f.lp, f.mask)
