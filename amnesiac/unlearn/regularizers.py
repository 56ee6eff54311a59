"""Utility regularisers added to a forget loss with weight α on a paired retain batch (docs/science.md §2)."""
from __future__ import annotations

import torch

from ..registry import register
from .common import Ctx, Regularizer, forward


def gdr_loss(lp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """CE(θ; R): mean NLL over the retain batch's scored tokens. lp, mask: (B, T-1)."""
    return -lp.sum() / mask.sum().clamp_min(1)


def kl_loss(ref_logp: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """Token-level KL(π_ref ‖ π_θ) on log-softmax outputs, averaged over positions.

    ref_logp, logp: (N, V) log-probabilities. KL_t = Σ_v p_ref (log p_ref − log p_θ) ≥ 0. Using raw logits
    instead of log-softmax (as one public release does) is a bug: the value is then unbounded."""
    return (ref_logp.exp() * (ref_logp - logp)).sum(-1).mean()


@register("regularizers", "none")
class NoReg(Regularizer):
    """No utility constraint (the forget loss alone)."""
    name = "none"


@register("regularizers", "gdr")
class GDR(Regularizer):
    """Gradient descent on retain: + α · CE(θ; R)."""
    name = "gdr"
    needs_retain = True

    def loss(self, ctx: Ctx, idx: list[int]) -> torch.Tensor:
        f = forward(ctx.model, ctx.data["retain"].encode(idx, ctx.device))
        return gdr_loss(f.lp, f.mask)


@register("regularizers", "klr")
class KLR(Regularizer):
    """KL to the frozen reference on retain: + α · KL(π_ref(·|x_R) ‖ π_θ(·|x_R)), token level."""
    name = "klr"
    needs_retain = True
    ref_needs = (("retain", "dist"),)

    def loss(self, ctx: Ctx, idx: list[int]) -> torch.Tensor:
        enc = ctx.data["retain"].encode(idx, ctx.device)
        f = forward(ctx.model, enc, need_dist=True)
        return kl_loss(ctx.ref.dist("retain", idx, enc), f.dist)
