"""NPO (Zhang et al. 2024), docs/science.md §2: (2/β) · E_F[ log(1 + (π_θ(y|x)/π_ref(y|x))^β) ], β = 0.1."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import register
from .common import Ctx, Method, forward


def npo_loss(seq_lp: torch.Tensor, ref_seq_lp: torch.Tensor, beta: float) -> torch.Tensor:
    """seq_lp, ref_seq_lp: (B,) summed answer log-probs under θ and π_ref.

    log(1 + (π_θ/π_ref)^β) = softplus(β (log π_θ − log π_ref)), the numerically stable form."""
    return (2.0 / beta) * F.softplus(beta * (seq_lp - ref_seq_lp)).mean()


@register("unlearn_methods", "npo")
class NPO(Method):
    """Negative preference optimisation against the frozen target (β = 0.1); bounded, slower than GA."""
    name = "npo"
    default_beta = 0.1
    ref_needs = (("forget", "seq"),)

    def forget_loss(self, ctx: Ctx, idx: list[int]) -> torch.Tensor:
        enc = ctx.data["forget"].encode(idx, ctx.device)
        f = forward(ctx.model, enc)
        ref = ctx.ref.seq("forget", idx, enc)
        return npo_loss(f.seq_lp, ref, self.beta)
