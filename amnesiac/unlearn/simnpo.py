"""SimNPO (Fan et al. 2024), docs/science.md §2: −(2/β) · E_F[ log σ( −(β/|y|) log π_θ(y|x) − γ ) ].

Reference-free and length-normalised. Defaults β = 2.5, γ = 0 (the paper's TOFU setting)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import register
from .common import Ctx, Method, forward


def simnpo_loss(seq_lp: torch.Tensor, lengths: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """seq_lp: (B,) summed answer log-probs; lengths: (B,) |y| in tokens.

    −log σ(z) = softplus(−z) with z = −(β/|y|) log π − γ."""
    z = -(beta / lengths.clamp_min(1)) * seq_lp - gamma
    return (2.0 / beta) * F.softplus(-z).mean()


@register("unlearn_methods", "simnpo")
class SimNPO(Method):
    """Simple NPO: reference-free, length-normalised (β = 2.5, γ = 0 by default)."""
    name = "simnpo"
    default_beta = 2.5

    def forget_loss(self, ctx: Ctx, idx: list[int]) -> torch.Tensor:
        f = forward(ctx.model, ctx.data["forget"].encode(idx, ctx.device))
        return simnpo_loss(f.seq_lp, f.lengths, self.beta, self.cfg.gamma)

    def hparams(self):
        return {"beta": self.beta, "gamma": self.cfg.gamma}
