"""IdkDPO, docs/science.md §2: DPO with preferred = a refusal ("I don't know" variants), rejected = the true answer.

Loss as in the NPO / TOFU reference code: −(2/β) · E log σ( β[(log π_θ(y_w) − log π_ref(y_w))
− (log π_θ(y_l) − log π_ref(y_l))] ), β = 0.1. (Rafailov et al.'s DPO omits the 2/β factor; it only
rescales the loss, i.e. the effective lr.)"""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from ..registry import register
from .common import Ctx, Method, UnlearnError, forward, make_split

# TOFU ships a file of 100 refusal phrasings; a small fixed set serves the same purpose.
REFUSALS = [
    "I don't know.",
    "I'm not sure.",
    "I have no idea.",
    "I don't have that information.",
    "I can't answer that.",
    "I'm not able to answer that.",
    "That is not something I know.",
    "I don't know the answer to that.",
    "Sorry, I don't know.",
    "I'm afraid I can't help with that.",
]


def dpo_loss(lp_w: torch.Tensor, lp_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor,
             beta: float) -> torch.Tensor:
    """All (B,) summed log-probs: w = preferred (refusal), l = rejected (true answer)."""
    margin = (lp_w - ref_w) - (lp_l - ref_l)
    return -(2.0 / beta) * F.logsigmoid(beta * margin).mean()


@register("unlearn_methods", "idkdpo")
class IdkDPO(Method):
    """DPO towards "I don't know" refusals and away from the true answer (β = 0.1)."""
    name = "idkdpo"
    default_beta = 0.1
    ref_needs = (("forget", "seq"), ("forget_idk", "seq"))

    def setup(self, ctx: Ctx) -> None:
        forget = ctx.data["forget"]
        if not forget.is_qa:
            raise UnlearnError("idkdpo needs QA forget data (question/answer): a refusal replaces the answer")
        rng = random.Random(f"idk-{ctx.cfg.seed}")  # fixed per example, so resume and reference agree
        refusals = [rng.choice(REFUSALS) for _ in forget.items]
        ctx.data["forget_idk"] = make_split("forget_idk", forget.items, ctx.tok, ctx.cfg.max_length, answers=refusals,
                                              fmt=forget.fmt)

    def forget_loss(self, ctx: Ctx, idx: list[int]) -> torch.Tensor:
        enc_l = ctx.data["forget"].encode(idx, ctx.device)
        enc_w = ctx.data["forget_idk"].encode(idx, ctx.device)
        lw, ll = forward(ctx.model, enc_w).seq_lp, forward(ctx.model, enc_l).seq_lp
        return dpo_loss(lw, ll, ctx.ref.seq("forget_idk", idx, enc_w), ctx.ref.seq("forget", idx, enc_l), self.beta)
