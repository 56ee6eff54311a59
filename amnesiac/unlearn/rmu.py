"""RMU (Li et al. 2024, WMDP), docs/science.md §2: at decoder layer ℓ,
    ‖h_θ(x_F) − c·u‖² + α‖h_θ(x_R) − h_ref(x_R)‖²,
u a fixed random unit vector, c the steering scale; only the MLPs of layers ℓ−2..ℓ are trained.

As in the WMDP reference code: u ~ U[0,1)^H normalised, both terms are mean squared errors (mean over
positions and hidden units), α weights the retain term. h is the raw output of block ℓ. For QA the
positions are those that predict answer tokens (the loss is on answers only); for raw text all tokens.
Defaults here (layer = n_layers // 2, c = 6.5, α = 100) are starting points, not tuned values: WMDP
used ℓ = 7, c = 6.5, α = 1200 for Zephyr-7B."""
from __future__ import annotations

import torch

from ..registry import register
from .common import Ctx, Method, UnlearnError, decoder_layers, forward


def rmu_forget_loss(h: torch.Tensor, control: torch.Tensor) -> torch.Tensor:
    """h: (N, H) hidden states on forget positions; control: (H,) = c·u."""
    return (h - control).pow(2).mean()


def rmu_retain_loss(h: torch.Tensor, h_ref: torch.Tensor) -> torch.Tensor:
    """h, h_ref: (N, H) hidden states of θ and of the frozen reference on retain positions."""
    return (h - h_ref).pow(2).mean()


@register("unlearn_methods", "rmu")
class RMU(Method):
    """Representation misdirection: steer layer-ℓ activations on forget data to c·u, keep them on retain."""
    name = "rmu"
    ref_needs = (("retain", "hidden"),)

    def layer(self, model) -> int:
        n = len(decoder_layers(model))
        ell = self.cfg.rmu_layer if self.cfg.rmu_layer is not None else n // 2
        if not 0 <= ell < n:
            raise UnlearnError(f"rmu_layer {ell} out of range: the model has {n} decoder layers (0..{n - 1})")
        return ell

    def setup(self, ctx: Ctx) -> None:
        if "retain" not in ctx.data:
            raise UnlearnError("rmu needs a retain set (its loss keeps retain activations at the reference's)")
        ell = self.layer(ctx.model)
        hidden = ctx.model.config.hidden_size
        g = torch.Generator().manual_seed(ctx.cfg.seed)
        u = torch.rand(hidden, generator=g)
        ctx.state["rmu_layer"] = ell
        ctx.state["rmu_control"] = (self.cfg.rmu_c * u / u.norm()).to(ctx.device)  # (H,)

    def trainable(self, model, ctx: Ctx) -> list[str]:
        ell = ctx.state["rmu_layer"]
        layers = decoder_layers(model)
        want = {id(p) for i in range(max(0, ell - 2), ell + 1) for n, p in layers[i].named_parameters()
                if ".mlp." in f".{n}" or n.startswith("mlp.")}
        names = [n for n, p in model.named_parameters() if id(p) in want]
        if not names:
            raise UnlearnError(f"rmu: no MLP parameters found in layers {max(0, ell - 2)}..{ell}")
        return names

    def forget_loss(self, ctx: Ctx, idx: list[int]) -> torch.Tensor:
        f = forward(ctx.model, ctx.data["forget"].encode(idx, ctx.device), layer=ctx.state["rmu_layer"])
        return rmu_forget_loss(f.hidden, ctx.state["rmu_control"])

    def retain_loss(self, ctx: Ctx, idx: list[int]) -> torch.Tensor:
        enc = ctx.data["retain"].encode(idx, ctx.device)
        f = forward(ctx.model, enc, layer=ctx.state["rmu_layer"])
        return self.cfg.rmu_alpha * rmu_retain_loss(f.hidden, ctx.ref.hidden("retain", idx, enc, ctx.state["rmu_layer"]))

    def hparams(self):
        return {"rmu_layer": self.cfg.rmu_layer, "rmu_c": self.cfg.rmu_c, "rmu_alpha": self.cfg.rmu_alpha}
